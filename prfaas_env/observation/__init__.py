"""The observation layer: what a router knows at a decision, one code path for every user.

- :mod:`.encoder`: the feature table, the column layout of a view and its normalisation;
- :mod:`.derive`: the compiled derivations (uncached tokens, prefill and transfer times,
  estimated TTFT, the action mask) and normalisation;
- :mod:`.routes`: what each action means (the route table);
- :mod:`.live`: live cluster state (JSON-like data a deployed router receives) parsed into a
  view;
- :mod:`.simulated`: the simulator's view (:mod:`prfaas_env.sim.view`) finished into
  observations, for the environment and evaluation.

The environment, the evaluation, the exported router and the gateway all observe through
these, so what a policy sees in training is what it sees when deployed.
"""
