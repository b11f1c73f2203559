"""placeholder"""


def add_demo_arguments(p):
    pass


def run_demo_command(args):
    return 0
