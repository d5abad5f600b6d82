"""kldiv.torch.install(): PyTorch's own kl_div (F.kl_div, torch.kl_div,
nn.KLDivLoss) on kldiv's kernels for the tensors kldiv takes, PyTorch's for
the rest, eagerly and under torch.compile; uninstall() restores PyTorch."""
import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F

import kldiv.torch

pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean':UserWarning")


@pytest.fixture(autouse=True)
def _restored():
    """Every test starts and ends with PyTorch's own kl_div."""
    kldiv.torch.uninstall()
    yield
    kldiv.torch.uninstall()


def _pair(shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).log_softmax(-1).to(dtype)
    t = torch.randn(shape, generator=generator).softmax(-1).to(dtype)
    return x, t


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(16, 300)

    def forward(self, features):
        return self.linear(features).log_softmax(-1)


def train(criterion, steps=4):
    """A training loop written against plain PyTorch: the losses and the final weights' gradient."""
    torch.manual_seed(0)
    model = Model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    teacher = torch.randn(8, 300).softmax(-1)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = criterion(model(torch.randn(8, 16)), teacher)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses), model.linear.weight.grad.clone()


def _kldiv_batchmean(x, t):
    """What installed kldiv computes for nn.KLDivLoss('batchmean'): aten's sum on kldiv's kernel, divided by PyTorch."""
    return kldiv.torch.kl_div(x, t, reduction="sum") / x.size(0)


def test_an_unmodified_training_loop_runs_on_kldiv():
    with kldiv.torch.installed():
        losses, grad = train(torch.nn.KLDivLoss(reduction="batchmean"))
    want_losses, want_grad = train(_kldiv_batchmean)
    assert torch.equal(losses, want_losses) and torch.equal(grad, want_grad)
    pytorch_losses, _ = train(torch.nn.KLDivLoss(reduction="batchmean"))
    torch.testing.assert_close(losses, pytorch_losses)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum", "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
def test_every_entry_point_runs_kldivs_kernels(reduction, log_target):
    x, t = _pair((6, 50), seed=1)
    t = t.log() if log_target else t
    code = {"none": 0, "mean": 1, "sum": 2, "batchmean": 2}[reduction]
    want = kldiv.torch.kl_div(x, t, reduction="sum" if reduction == "batchmean" else reduction, log_target=log_target)
    want = want / x.size(0) if reduction == "batchmean" else want
    with kldiv.torch.installed():
        module = torch.nn.KLDivLoss(reduction=reduction, log_target=log_target)(x, t)
        functional = F.kl_div(x, t, reduction=reduction, log_target=log_target)
        aten = torch.kl_div(x, t, code, log_target=log_target)
        a = x.clone().requires_grad_()
        F.kl_div(a, t, reduction=reduction, log_target=log_target).sum().backward()
    for got in (module, functional):
        assert torch.equal(got, want)
    if reduction != "batchmean":
        assert torch.equal(aten, want)
    b = x.clone().requires_grad_()
    (kldiv.torch.kl_div(b, t, reduction="sum" if reduction == "batchmean" else reduction, log_target=log_target)
     / (x.size(0) if reduction == "batchmean" else 1)).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_the_graph_holds_kldivs_backward():
    x, t = _pair((3, 20))
    x.requires_grad_()
    with kldiv.torch.installed():
        loss = F.kl_div(x, t, reduction="sum")
    assert "KLDiv" in loss.grad_fn.name() or "kldiv" in loss.grad_fn.name()
    uninstalled = F.kl_div(x, t, reduction="sum")
    assert "KLDiv" not in uninstalled.grad_fn.name() and "kldiv" not in uninstalled.grad_fn.name()


def _outcome(function):
    try:
        return function(), None
    except Exception as error:  # noqa: BLE001 (PyTorch's error is what must come)
        return None, (type(error), str(error))


@pytest.mark.parametrize("case", [
    (torch.randn(3, 4), torch.rand(3, 4, dtype=torch.float64)),
    (torch.randint(0, 5, (3, 4)), torch.randint(0, 5, (3, 4))),
    (torch.randn(3, 4, dtype=torch.complex64), torch.randn(3, 4, dtype=torch.complex64)),
    (torch.randn(3, 4).to_sparse(), torch.rand(3, 4).to_sparse()),
    (torch.randn(3, 4, device="meta"), torch.rand(3, 4, device="meta")),
], ids=["mixed-dtypes", "integers", "complex", "sparse", "meta"])
def test_what_kldiv_does_not_take_stays_pytorchs(case):
    x, t = case
    want, want_error = _outcome(lambda: F.kl_div(x, t, reduction="sum"))
    with kldiv.torch.installed():
        got, got_error = _outcome(lambda: F.kl_div(x, t, reduction="sum"))
    assert got_error == want_error
    if want is not None:
        assert got.dtype == want.dtype and got.shape == want.shape and got.device == want.device
        if want.device.type == "cpu" and not want.is_sparse:
            assert torch.equal(got, want)


def test_double_backward_stays_pytorchs():
    grads = []
    for install in (True, False):
        x, t = _pair((3, 7), torch.float64)
        x.requires_grad_(), t.requires_grad_()
        with kldiv.torch.installed() if install else contextlib.nullcontext():
            (grad,) = torch.autograd.grad(F.kl_div(x, t, reduction="batchmean"), x, create_graph=True)
            (grad * grad).sum().backward()
        grads.append(t.grad)
    torch.testing.assert_close(*grads)


def test_install_is_idempotent_and_uninstall_restores_pytorch():
    x, t = _pair((4, 9), seed=2)
    x.requires_grad_()
    assert not kldiv.torch.is_installed()
    kldiv.torch.install()
    kldiv.torch.install()
    assert kldiv.torch.is_installed()
    assert "KLDiv" in F.kl_div(x, t, reduction="sum").grad_fn.name()
    kldiv.torch.uninstall()
    kldiv.torch.uninstall()
    assert not kldiv.torch.is_installed()
    assert "KLDiv" not in F.kl_div(x, t, reduction="sum").grad_fn.name()
    # Installable again after uninstalling (the registration is gone, not shadowed).
    with kldiv.torch.installed():
        assert "KLDiv" in F.kl_div(x, t, reduction="sum").grad_fn.name()
    assert not kldiv.torch.is_installed()


def test_the_context_manager_keeps_an_earlier_install():
    kldiv.torch.install()
    with kldiv.torch.installed():
        pass
    assert kldiv.torch.is_installed()


def test_mean_warns_once_as_pytorch_does():
    x, t = _pair((4, 9), seed=3)
    for install in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with kldiv.torch.installed() if install else contextlib.nullcontext():
                F.kl_div(x, t, reduction="mean")
        assert len([w for w in caught if "'mean' divides" in str(w.message)]) == 1


@pytest.mark.skipif(not hasattr(torch.library, "custom_op"), reason="torch.compile over kldiv needs torch 2.4")
@pytest.mark.filterwarnings("error:aten..kl_div. an autograd kernel was not registered")
def test_compiled_pytorch_code_runs_kldiv_and_uninstall_restores_it():
    graphs = []

    def backend(graph_module, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._functorch.aot_autograd import aot_module_simplified

        def keep(gm, inputs):
            graphs.append(str(gm.graph))
            return make_boxed_func(gm)

        return aot_module_simplified(graph_module, example_inputs, fw_compiler=keep, bw_compiler=keep)

    def step(a, b):
        return torch.nn.functional.kl_div(a, b, reduction="batchmean")

    x, t = _pair((8, 64), seed=4)
    # A trace before install() (PyTorch's tracer caches how it resolves kl_div).
    torch.compile(step, fullgraph=True, backend=backend)(x.clone().requires_grad_(), t).backward()
    assert graphs and not any("kldiv" in graph for graph in graphs)
    graphs.clear()
    torch._dynamo.reset()
    with kldiv.torch.installed():
        a = x.clone().requires_grad_()
        loss = torch.compile(step, fullgraph=True, backend=backend)(a, t)
        loss.backward()
        b = x.clone().requires_grad_()
        eager = step(b, t)
        eager.backward()
    assert any("kldiv.kl_div" in graph for graph in graphs)
    assert torch.equal(loss, eager) and torch.equal(a.grad, b.grad)
    graphs.clear()
    torch._dynamo.reset()  # functions compiled while installed keep kldiv until compiled again
    torch.compile(step, fullgraph=True, backend=backend)(x.clone().requires_grad_(), t).backward()
    assert graphs and not any("kldiv" in graph for graph in graphs)
