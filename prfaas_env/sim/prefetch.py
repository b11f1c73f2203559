"""Software prefetch for compiled code: ask the CPU to start loading memory before it is read.

With thousands of envs the simulator's state (about 19 KiB per env) is far larger than the
CPU caches, so each env's arrays come from main memory when its turn comes, and a decision
would wait on a few dozen such loads one after another. The event loop therefore names the
memory an env will touch a few envs before it steps that env (``kernel._prefetch_*``), so the
loads overlap with the work on the envs in between. Measured on the 2-core VM at 4096 envs
(paper scenario, time inside ``VecSimulator.step``, the kernel built with and without the
prefetch calls and run alternately): about 1.25x the decisions per second with two threads,
1.4x with one.

A prefetch is a hint: it never changes a result, and the address it names is not read (an
address outside the array would be harmless, but the helpers below stay inside it anyway).
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from prfaas_env.sim.jit import compiled_inline

LINE_BYTES = 64  # cache line of x86-64 and most ARM server cores


def _typed(arr: Any, row: Any, offset: Any) -> bool:
    return (
        isinstance(arr, types.Array)
        and arr.layout == "C"
        and isinstance(row, types.Integer)
        and isinstance(offset, types.Integer)
    )


def _address(context: Any, builder: Any, sig: Any, args: Any) -> Any:
    """LLVM value of the address (an int64) of byte ``offset`` of ``arr[row]``."""
    ary = context.make_array(sig.args[0])(context, builder, args[0])
    stride0 = builder.extract_value(ary.strides, 0)
    row_v = context.cast(builder, args[1], sig.args[1], types.int64)
    off_v = context.cast(builder, args[2], sig.args[2], types.int64)
    base = builder.ptrtoint(ary.data, ir.IntType(64))
    return builder.add(base, builder.add(builder.mul(row_v, stride0), off_v))


@intrinsic
def byte_address(typingctx: Any, arr: Any, row: Any, offset: Any) -> Any:
    """Address of byte ``offset`` of row ``row`` of the C-contiguous array ``arr``: the
    address :func:`prefetch_bytes` prefetches (exposed so that tests can check it)."""
    if not _typed(arr, row, offset):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return _address(context, builder, sig, args)

    return types.int64(arr, row, offset), codegen


@intrinsic
def prefetch_bytes(typingctx: Any, arr: Any, row: Any, offset: Any) -> Any:
    """Prefetch (for writing, high temporal locality) the cache line holding byte ``offset``
    of row ``row`` of the C-contiguous array ``arr`` (row = index along the first axis)."""
    if not _typed(arr, row, offset):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        i8p = ir.IntType(8).as_pointer()
        ptr = builder.inttoptr(_address(context, builder, sig, args), i8p)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        # the intrinsic's name carries the pointer type: p0i8 (typed pointers), p0 (opaque)
        name = "llvm.prefetch." + i8p.intrinsic_name
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        # (address, 1 = prepare for a write, 3 = keep in all cache levels, 1 = data)
        builder.call(fn, [ptr, i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, row, offset), codegen


@compiled_inline
def row_bytes(arr: Any) -> int:
    """Bytes of one row ``arr[i]`` of a C-contiguous array (0 when it has no rows)."""
    if arr.shape[0] == 0:
        return 0
    return arr.size // arr.shape[0] * arr.itemsize


@compiled_inline
def prefetch_span(arr: Any, row: int, offset: int, nbytes: int) -> None:
    """Prefetch every cache line holding bytes ``offset .. offset + nbytes - 1`` of
    ``arr[row]`` (a C-contiguous array): one prefetch per 64 bytes from the span's first
    byte, and one for its last byte (a span need not start on a line boundary, so the last
    byte can lie one line beyond the others)."""
    for off in range(offset, offset + nbytes, LINE_BYTES):
        prefetch_bytes(arr, row, off)
    if nbytes > 0:
        prefetch_bytes(arr, row, offset + nbytes - 1)


@compiled_inline
def prefetch_row(arr: Any, row: int) -> None:
    """Prefetch every cache line of ``arr[row]`` (a C-contiguous array)."""
    prefetch_span(arr, row, 0, row_bytes(arr))
