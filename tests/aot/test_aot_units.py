"""The parts of `activeit_jax.aot` that need no TPU compiler: targets, HLO counting, the
platform a program is traced for."""
import jax
import pytest

from activeit_jax import partitioning
from activeit_jax.aot import hlo, programs, targets
from activeit_jax.core.errors import UsageError
from activeit_jax.core.platform import target_platform


@pytest.mark.parametrize("name, topology, chips", [
    ("v5e:4x4", "v5e:4x4", 16), ("v5e-8", "v5e:2x4", 8), ("v5litepod-16", "v5e:4x4", 16),
    ("v4-8", "v4:2x2x1", 4), ("v4-32", "v4:2x2x4", 16), ("v4-64", "v4:2x4x4", 32),
    ("v5p-32", "v5p:2x2x4", 16), ("v6e-8", "v6e:2x4", 8), ("v4:2x2x4", "v4:2x2x4", 16)])
def test_target_names(name, topology, chips):
    target = targets.parse_target(name)
    assert (target.topology, target.num_chips) == (topology, chips)
    assert target.with_chips(2 * chips).num_chips == 2 * chips


@pytest.mark.parametrize("name", ["v5e:4x4x4", "v9:2x2", "v5e-12", "tpu", "v4:2x2"])
def test_bad_target_names_are_usage_errors(name):
    with pytest.raises(UsageError):
        targets.parse_target(name)


_MODULE = """HloModule m

%body (p: (s32[], f32[8,16])) -> (s32[], f32[8,16]) {
  %p = (s32[], f32[8,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8,16]{1,0} get-tuple-element(%p), index=1
  %w = f32[16,16]{1,0} parameter(1)
  %d = f32[8,16]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %one = s32[] constant(1)
  %n = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[8,16]{1,0}) tuple(%n, %d)
}

%cond (p: (s32[], f32[8,16])) -> pred[] {
  %p = (s32[], f32[8,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %lim = s32[] constant(5)
  ROOT %lt = pred[] compare(%i, %lim), direction=LT
}

%stop (p: (s32[], f32[8,16])) -> pred[] {
  %p = (s32[], f32[8,16]{1,0}) parameter(0)
  %x = f32[8,16]{1,0} get-tuple-element(%p), index=1
  %z = f32[] constant(0)
  ROOT %any = pred[] reduce(%x, %z), dimensions={0,1}, to_apply=%cond
}

ENTRY %main (a: f32[8,16], b: f32[16,32]) -> f32[32,16] {
  %a = f32[8,16]{1,0} parameter(0)
  %b = f32[16,32]{1,0} parameter(1)
  %c = f32[8,32]{1,0} convolution(%a, %b), dim_labels=bf_io->bf
  %zero = s32[] constant(0)
  %init = (s32[], f32[8,16]{1,0}) tuple(%zero, %a)
  %loop = (s32[], f32[8,16]{1,0}) while(%init), condition=%cond, body=%body
  %open = (s32[], f32[8,16]{1,0}) while(%init), condition=%stop, body=%body
  %r = f32[8,16]{1,0} get-tuple-element(%loop), index=1
  ROOT %ag = f32[32,16]{1,0} all-gather(%r), dimensions={0}, replica_groups={{0,1,2,3}}
}
"""


def test_hlo_counts_weight_loop_bodies_by_their_trip_counts():
    counts = hlo.count(_MODULE, unknown_trips=3)
    dot, conv = 2 * 8 * 16 * 16, 2 * 8 * 32 * 16
    assert counts.flops_once == dot + conv  # the body is one computation, counted once
    # `counter < 5` from 0: 5 trips; the loop that ends on data: the bound given (3).
    assert sorted((loop.trips, loop.known) for loop in counts.loops) == [(3, False), (5, True)]
    assert counts.flops == conv + (5 + 3) * dot
    assert counts.collectives == {"all-gather": {"count": 1, "bytes": 32 * 16 * 4}}
    assert counts.bytes > counts.bytes_once > 0


def test_hlo_shapes_and_tuples():
    assert hlo.shape_bytes("(bf16[4,8]{1,0:T(8,128)(2,1)}, s32[], pred[3])") == 64 + 4 + 3
    ins = hlo.parse_instruction(
        "  ROOT %x.1 = (f32[2]{0}, f32[]) all-reduce-start(%a, %b), channel_id=1")
    assert (ins.name, ins.opcode, ins.operands, ins.root) == ("x.1", "all-reduce-start",
                                                              ["a", "b"], True)
    assert hlo.collective_kind(ins.opcode) == "all-reduce"


def test_target_platform_follows_the_mesh():
    assert target_platform() == jax.default_backend()
    mesh = partitioning.make_mesh({"data": -1}, jax.devices()[:1])
    with partitioning.mesh_context(mesh):
        assert target_platform() == "cpu"


def test_planner_shapes_are_the_scorers_extreme_batches():
    # Budget 32768 tokens, at most 64 rows: the longest bucket gets 32 rows, 512 gets 64.
    assert programs.planner_shapes((128, 256, 512, 1024), 32768, 64, 4) == [(32, 1024),
                                                                           (64, 512)]
    assert programs.planner_shapes((256,), None, 16, 4) == [(16, 256)]


def test_the_tpu_extra_pins_the_locked_jax_and_the_lock_its_libtpu():
    import importlib.metadata
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parents[2]
    # The runtime lock pins jax; the test lock (which `make test` installs) pins libtpu.
    lock = dict(line.split("==") for name in ("requirements.lock", "requirements-test.lock")
                for line in (root / name).read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    extra = re.search(r'"tpu": \["jax\[tpu\]==([^"]+)"\]', (root / "setup.py").read_text())
    assert extra and extra.group(1) == lock["jax"]  # what the TPU VM launchers install
    # jax's own metadata names the libtpu of its `tpu` extra: the lock pins that one.
    wanted = [req for req in importlib.metadata.requires("jax") or ()
              if req.startswith("libtpu") and "tpu" in req.split(";")[-1]]
    if importlib.metadata.version("jax") == lock["jax"] and wanted:
        pin = re.match(r"libtpu\s*==\s*(\d+(?:\.\d+)*)(\.\*)?", wanted[0])
        assert pin, wanted
        version = pin.group(1)
        assert (lock["libtpu"].startswith(version + ".") if pin.group(2)
                else lock["libtpu"] == version), (wanted, lock["libtpu"])
