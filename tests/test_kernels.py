"""Tests for advfeat.kernels: the reference is the spec; Triton must match it.

Triton runs on CPU only through its interpreter, and triton reads TRITON_INTERPRET
when kernels are defined. Another test file may already have imported the kernels
in this process, so every Triton run happens in a fresh subprocess: this file run
as a script (`python tests/test_kernels.py OUT`) evaluates every case in CASES
through the dispatcher with ADVFEAT_KERNELS=triton and TRITON_INTERPRET=1, and
saves each case's error against the reference (cases.max_error) for the parent to judge
by cases.TOLERANCE, the tolerance `advfeat doctor` and tests/test_cuda.py use too.
"""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import advfeat.kernels as K
from advfeat.kernels import cases
from advfeat.kernels import eager as reference

INF = math.inf
BF16 = torch.bfloat16
# The named corner cases of the kernel case table (advfeat/kernels/cases.py). Small batches: the
# interpreter is slow; `advfeat doctor` runs the table's grid of layouts, dtypes and batch sizes.
CASES = {case.name: case for case in cases.EDGE_CASES}


def _inputs(shape=(3, 3, 8, 8), eps=0.5, **options):
    """l2_step arguments from the case table's input maker (x0 with exact 0s and 1s)."""
    return cases.KernelCase("test", "l2_step", shape, eps=eps, **options).inputs()


def _run_child(code: str, **env: str) -> None:
    child_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ADVFEAT_KERNELS")}
    child_env.update(env)
    proc = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def triton_errors(tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "results.pt"
    _run_child(f"import runpy, sys; sys.argv = ['', {str(out)!r}]; runpy.run_path({__file__!r}, run_name='__main__')",
               TRITON_INTERPRET="1", ADVFEAT_KERNELS="triton")
    return torch.load(out)


@pytest.mark.parametrize("name", CASES)
def test_triton_matches_reference(name, triton_errors):
    assert triton_errors[name] <= cases.TOLERANCE


def test_triton_ops_compile_without_graph_break():
    """Dispatcher + triton_op trace into one dynamo graph (meta tensors: no GPU needed)."""
    _run_child(textwrap.dedent("""
        import torch, advfeat.kernels as K
        graphs = []
        def record(gm, example_inputs):
            graphs.append(gm)
            return gm.forward
        def attack_step(x, x0, g, eps):
            x = K.linf_project(K.l2_step(x, x0, g, 0.3, eps), x0, eps)
            return K.linf_step(K.l2_project(x, x0, 0.5), x0, g, -0.1, 1.0), K.batch_l2_norm(g)
        m = lambda *s: torch.empty(*s, device="meta")
        torch.compile(attack_step, fullgraph=True, backend=record)(m(4, 3, 8, 8), m(4, 3, 8, 8), m(4, 3, 8, 8), m(4))
        code = graphs[0].code
        for op in ["l2_step", "linf_step", "l2_project", "linf_project", "batch_l2_norm"]:
            assert f"torch.ops.advfeat.{op}" in code, code
    """), ADVFEAT_KERNELS="triton")


def test_kernels_compile_for_a_real_gpu():
    """The interpreter accepts code the compiler rejects: build sm_90 binaries (no GPU needed)."""
    _run_child(textwrap.dedent("""
        import itertools, triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from advfeat.kernels import triton_steps as T
        scalars = {"n": "i32", "step_size": "fp32", "eps_scalar": "fp32"}
        flags = ["HAS_STEP", "EPS_PER_EXAMPLE", "BLOCK"]
        for kernel, g, has_step, per_example in itertools.product(
            [T._l2_kernel, T._linf_kernel], ["*fp32", "*bf16"], [True, False], [True, False]
        ):
            sig = {a: scalars.get(a, g if a == "g_ptr" else "*fp32") for a in kernel.arg_names if a not in flags}
            sig.update(dict.fromkeys(flags, "constexpr"))
            consts = {"HAS_STEP": has_step, "EPS_PER_EXAMPLE": per_example, "BLOCK": T.BLOCK}
            triton.compile(ASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32))
        for t in ["*fp32", "*bf16"]:
            sig = {"t_ptr": t, "out_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}
            triton.compile(ASTSource(T._norm_kernel, sig, {"BLOCK": T.BLOCK}), target=GPUTarget("cuda", 90, 32))
    """))


# --- the reference itself -------------------------------------------------------


def test_l2_step_by_hand():
    x0 = torch.tensor([[0.5, 0.5]])
    grad = torch.tensor([[3.0, 4.0]])  # g_hat = (0.6, 0.8)
    # x1 = (0.8, 0.9), d = (0.3, 0.4) with ||d|| = 0.5, halved by eps = 0.25.
    assert torch.allclose(reference.l2_step(x0, x0, grad, 0.5, 0.25), torch.tensor([[0.65, 0.7]]))
    # No projection; x1 = (1.1, 1.3) is clamped back into the pixel range.
    assert torch.equal(reference.l2_step(x0, x0, grad, 1.0, INF), torch.tensor([[1.0, 1.0]]))
    # Descent.
    assert torch.allclose(reference.l2_step(x0, x0, grad, -0.5, INF), torch.tensor([[0.2, 0.1]]))


@pytest.mark.parametrize("eps", [0.0, 0.3, 2.0, [0.0, 0.3, 2.0, INF, 0.05]])
@pytest.mark.parametrize("step", [0.5, -3.0])
def test_reference_invariants(eps, step):
    x, x0, grad, _, eps = _inputs((5, 3, 8, 8), eps=tuple(eps) if isinstance(eps, list) else eps, grad_dtype=BF16,
                                  seed=1)
    l2 = reference.l2_step(x, x0, grad, step, eps)
    assert torch.all(reference.batch_l2_norm(l2 - x0) <= eps + 1e-6)
    linf = reference.linf_step(x, x0, grad, step, eps)
    assert torch.all((linf - x0).abs().flatten(1).amax(1) <= eps + 1e-6)
    for out in (l2, linf, reference.l2_project(x, x0, eps), reference.linf_project(x, x0, eps)):
        assert out.min() >= 0 and out.max() <= 1
        if isinstance(eps, float) and eps == 0:
            assert torch.equal(out, x0)


def test_zero_gradient_is_a_zero_step():
    x, x0, grad, _, _ = _inputs(zero_grad_rows=(0, 1, 2))
    torch.testing.assert_close(reference.l2_step(x, x0, grad, 0.5, INF), x)
    assert torch.equal(reference.linf_step(x, x0, grad, 0.5, INF), x)


# --- dispatcher -----------------------------------------------------------------


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("ADVFEAT_KERNELS", raising=False)
    assert K.backend_for(torch.zeros(1)) == "reference"
    monkeypatch.setenv("ADVFEAT_KERNELS", "triton")
    assert K.backend_for(torch.zeros(1)) == "triton"
    monkeypatch.setenv("ADVFEAT_KERNELS", "cuda")
    with pytest.raises(ValueError, match="ADVFEAT_KERNELS"):
        K.backend_for(torch.zeros(1))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: K.l2_step(x, x[:2], x, 0.1, 0.5), "shapes differ"),
        (lambda x: K.linf_step(x, x, x[:, :2], 0.1, 0.5), "grad shape"),
        (lambda x: K.l2_step(x, x, x.half(), 0.1, 0.5), "float32 or bfloat16"),
        (lambda x: K.l2_project(x.double(), x.double(), 0.5), "float32"),
        (lambda x: K.l2_step(x, x, x, 0.1, torch.ones(2)), r"shape \[3\]"),
        (lambda x: K.linf_project(x, x, -0.1), ">= 0"),
        (lambda x: K.l2_project(x, x, math.nan), ">= 0"),
        (lambda x: K.linf_step(x, x, x, 0.1, torch.tensor([0.1, -1.0, INF])), ">= 0"),
        (lambda x: K.l2_step(x, x, x, torch.tensor(0.1), 0.5), "step_size"),
    ],
)
def test_validation_errors(call, message, monkeypatch):
    monkeypatch.delenv("ADVFEAT_KERNELS", raising=False)
    with pytest.raises(ValueError, match=message):
        call(torch.rand(3, 4, 5))


@pytest.mark.parametrize("eps", [0.5, [0.1, INF, 0.0]])
def test_torch_compile_around_dispatcher(eps, monkeypatch):
    monkeypatch.delenv("ADVFEAT_KERNELS", raising=False)
    x, x0, grad, _, eps = _inputs(eps=tuple(eps) if isinstance(eps, list) else eps)

    def two_steps(x, x0, grad, eps):
        x = K.linf_project(K.l2_step(x, x0, grad, 0.3, eps), x0, eps)
        return K.linf_step(x, x0, grad, 0.01, eps) * K.batch_l2_norm(x).view(-1, 1, 1, 1)

    compiled = torch.compile(two_steps, fullgraph=True)
    torch.testing.assert_close(compiled(x, x0, grad, eps), two_steps(x, x0, grad, eps), atol=1e-6, rtol=1e-6)


if __name__ == "__main__":  # the Triton subprocess; see the module docstring
    assert os.environ.get("TRITON_INTERPRET") == "1" and K.backend_for(torch.zeros(1)) == "triton"
    torch.save(cases.compare(cases.EDGE_CASES), sys.argv[1])
