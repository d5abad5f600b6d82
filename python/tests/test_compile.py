"""torch.compile over kldiv.torch (torch 2.4 and later): the custom ops pass
torch.library.opcheck, and models that call kl_div or distill_kl compile with
fullgraph=True and give eager's loss and gradients."""
import pytest
import torch
import torch.nn.functional as F

import kldiv.torch

if not hasattr(torch.library, "custom_op"):
    pytest.skip(f"torch {torch.__version__} has no torch.library.custom_op (2.4 and later)",
                allow_module_level=True)

REDUCTIONS = ["none", "mean", "sum", "batchmean"]
pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean':UserWarning")


def _pair(shape, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).log_softmax(-1).to(dtype)
    t = torch.randn(shape, generator=generator).softmax(-1).to(dtype)
    return x, t


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
def test_opcheck(reduction, log_target):
    x, t = _pair((5, 17), torch.float64)
    t = t.log() if log_target else t
    code = {"none": 0, "mean": 1, "sum": 2, "batchmean": 3}[reduction]
    for needs in ((True, False), (True, True), (False, True)):
        a, b = x.clone().requires_grad_(needs[0]), t.clone().requires_grad_(needs[1])
        torch.library.opcheck(torch.ops.kldiv.kl_div.default, (a, b, code, log_target))
    torch.library.opcheck(torch.ops.kldiv.kl_div_forward_backward.default,
                          (x.clone().requires_grad_(), t, code, log_target))


class Student(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(32, 500)
        self.loss = kldiv.torch.KLDivLoss(reduction="batchmean", log_target=True)

    def forward(self, features, teacher_log_probs):
        return self.loss(self.linear(features).log_softmax(-1), teacher_log_probs)


def _eager_and_compiled(model, features, teacher):
    """The model's loss and weight gradient, eager and compiled with fullgraph=True, checked equal."""
    compiled = torch.compile(model, fullgraph=True)
    results = []
    for function in (model, compiled):
        model.zero_grad()
        loss = function(features, teacher)
        loss.backward()
        results.append((loss.detach(), model.linear.weight.grad.clone()))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compiled_model_has_no_graph_break(dtype):
    torch.manual_seed(0)
    model = Student().to(dtype)
    features = torch.randn(8, 32, dtype=dtype)
    teacher = torch.randn(8, 500).log_softmax(-1).to(dtype)
    results = _eager_and_compiled(model, features, teacher)
    eager = F.kl_div(model.linear(features).log_softmax(-1), teacher, reduction="batchmean", log_target=True)
    torch.testing.assert_close(results[1][0], eager.detach())


# Not 'mean': its warning is a side effect that torch.compile may not trace.
@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
def test_compiled_gradients_for_both_operands(reduction):
    x, t = _pair((6, 70))
    compiled = torch.compile(lambda a, b: kldiv.torch.kl_div(a, b, reduction=reduction), fullgraph=True)
    results = []
    for function in (lambda a, b: F.kl_div(a, b, reduction=reduction), compiled):
        a, b = x.clone().requires_grad_(), t.clone().requires_grad_()
        loss = function(a, b)
        loss.backward(torch.ones_like(loss))
        results.append((loss.detach(), a.grad, b.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


# ---- distill_kl -------------------------------------------------------------

def _logits(shape, dtype=torch.float32, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(shape, generator=generator)).to(dtype)


@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
@pytest.mark.parametrize("reverse", [False, True])
def test_distill_opcheck(reduction, reverse):
    s, t = _logits((4, 40), torch.float64), _logits((4, 40), torch.float64, seed=2)
    row_on = torch.tensor([1, 0, 1, 1], dtype=torch.uint8)
    settings = (2.0, reduction, reverse, False)
    for needs in ((True, False), (True, True), (False, True)):
        a, b = s.clone().requires_grad_(needs[0]), t.clone().requires_grad_(needs[1])
        torch.library.opcheck(torch.ops.kldiv.distill_kl.default, (a, b, row_on, *settings))
    if reduction != "none":
        torch.library.opcheck(torch.ops.kldiv.distill_kl_forward_backward.default,
                              (s.clone().requires_grad_(), t, None, *settings))


def _composite(s, t, temperature, reduction, reverse):
    """The loss from PyTorch's operators: kl_div(log q, log p) (reverse: kl_div(log p, log q)) per row."""
    log_q, log_p = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    a, b = (log_p, log_q) if reverse else (log_q, log_p)
    if reduction == "none":
        return F.kl_div(a, b, reduction="none", log_target=True).sum(-1)
    return F.kl_div(a, b, reduction=reduction, log_target=True)


class DistilledStudent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(32, 300)

    def forward(self, features, teacher_logits):
        return kldiv.torch.distill_kl(self.linear(features), teacher_logits, temperature=2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_distill_compiled_model_has_no_graph_break(dtype):
    torch.manual_seed(0)
    model = DistilledStudent().to(dtype)
    features = torch.randn(8, 32, dtype=dtype)
    teacher = _logits((8, 300), dtype)
    _eager_and_compiled(model, features, teacher)


@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
@pytest.mark.parametrize("reverse", [False, True])
def test_distill_compiled_gradients_for_both_logits(reduction, reverse):
    s, t = _logits((6, 70), torch.float64), _logits((6, 70), torch.float64, seed=2)
    compiled = torch.compile(
        lambda a, b: kldiv.torch.distill_kl(a, b, temperature=0.5, reduction=reduction, reverse=reverse),
        fullgraph=True)
    results = []
    for function in (lambda a, b: _composite(a, b, 0.5, reduction, reverse), compiled):
        a, b = s.clone().requires_grad_(), t.clone().requires_grad_()
        loss = function(a, b)
        loss.backward(torch.ones_like(loss))
        results.append((loss.detach(), a.grad, b.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
