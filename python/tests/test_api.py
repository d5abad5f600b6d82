"""kldiv.torch's API against PyTorch's: views, dtypes, the module, legacy
arguments and warnings, errors, fallbacks, and calls from many threads."""
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kldiv
import kldiv.torch

REDUCTIONS = ["none", "mean", "sum", "batchmean"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean':UserWarning")


def _pair(shape, dtype=torch.float32, seed=0, log_target=False):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).log_softmax(-1)
    t = torch.randn(shape, generator=generator)
    t = t.log_softmax(-1) if log_target else t.softmax(-1)
    return x.to(dtype), t.to(dtype)


def _assert_same(got, want, dtype):
    assert got.dtype == want.dtype and got.shape == want.shape and got.device == want.device
    tolerance = {torch.float16: dict(rtol=1e-2, atol=1e-3), torch.bfloat16: dict(rtol=4e-2, atol=1e-2)}
    torch.testing.assert_close(got, want, equal_nan=True, **tolerance.get(dtype, {}))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
def test_values_equal_pytorchs(dtype, reduction, log_target):
    x, t = _pair((6, 40), dtype, log_target=log_target)
    _assert_same(kldiv.torch.kl_div(x, t, reduction=reduction, log_target=log_target),
                 F.kl_div(x.double(), t.double(), reduction=reduction, log_target=log_target).to(dtype), dtype)


VIEWS = {
    "transposed": lambda a: a.t(),
    "sliced": lambda a: a[1:5, 3:30:3],
    "column": lambda a: a[:, 7],
    "expanded": lambda a: a[:1].expand(6, 40),
    "permuted-3d": lambda a: a.reshape(6, 4, 10).permute(2, 0, 1),
    "zero-stride": lambda a: a[0, 0].expand(3, 5, 7),
}


@pytest.mark.parametrize("view", VIEWS.values(), ids=VIEWS.keys())
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_strided_views_without_copies(view, reduction):
    x, t = _pair((6, 40), seed=1)
    a, b = view(x), view(t.flip(0))
    assert not a.is_contiguous() or a.dim() <= 1 or a.stride(0) == 0
    _assert_same(kldiv.torch.kl_div(a, b, reduction=reduction), F.kl_div(a, b, reduction=reduction), torch.float32)


@pytest.mark.parametrize("shapes", [((5, 1, 8), (3, 8)), ((8,), (4, 8)), ((4, 8), ()), ((), (4, 8)), ((), ())])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_broadcasting_and_0_dim(shapes, reduction):
    x, t = torch.randn(shapes[0]), torch.rand(shapes[1])
    _assert_same(kldiv.torch.kl_div(x, t, reduction=reduction), F.kl_div(x, t, reduction=reduction), torch.float32)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (5, 0), (2, 0, 3)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_tensors(shape, reduction):
    x, t = torch.empty(shape), torch.empty(shape)
    _assert_same(kldiv.torch.kl_div(x, t, reduction=reduction), F.kl_div(x, t, reduction=reduction), torch.float32)


def test_edge_values():
    values = torch.tensor([0.0, -0.0, 1.0, float("inf"), float("-inf"), float("nan"), 1e-45, -1.0])
    x, t = values.repeat(8), values.repeat_interleave(8)
    for log_target in (False, True):
        _assert_same(kldiv.torch.kl_div(x, t, reduction="none", log_target=log_target),
                     F.kl_div(x, t, reduction="none", log_target=log_target), torch.float32)
        got = kldiv.torch.kl_div(x, t, reduction="none", log_target=log_target)
        want = F.kl_div(x, t, reduction="none", log_target=log_target)
        assert torch.equal(got.signbit() | want.isnan(), want.signbit() | want.isnan())


def _recorded(function):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function()
    return result, [(w.category, str(w.message)) for w in caught]


@pytest.mark.parametrize("legacy", [dict(size_average=True), dict(size_average=False), dict(reduce=False),
                                    dict(size_average=False, reduce=True), dict(size_average=True, reduce=False),
                                    dict(reduce=True, reduction="batchmean"), dict(reduce=False, reduction="batchmean"),
                                    dict(), dict(reduction="mean"), dict(reduction="sum")],
                         ids=str)
def test_functional_legacy_arguments_and_warnings(legacy):
    x, t = _pair((4, 9), seed=2)
    got, got_warnings = _recorded(lambda: kldiv.torch.kl_div(x, t, **legacy))
    want, want_warnings = _recorded(lambda: F.kl_div(x, t, **legacy))
    _assert_same(got, want, torch.float32)
    assert got_warnings == want_warnings


@pytest.mark.parametrize("arguments", [dict(), dict(reduction="batchmean", log_target=True),
                                       dict(size_average=False), dict(reduce=False, reduction="batchmean")],
                         ids=str)
def test_module_is_pytorchs(arguments):
    ours, ours_warnings = _recorded(lambda: kldiv.torch.KLDivLoss(**arguments))
    theirs, their_warnings = _recorded(lambda: torch.nn.KLDivLoss(**arguments))
    assert isinstance(ours, torch.nn.Module) and isinstance(ours, torch.nn.KLDivLoss)
    assert ours_warnings == their_warnings
    assert (ours.reduction, ours.log_target) == (theirs.reduction, theirs.log_target)
    assert repr(ours) == repr(theirs) and ours.state_dict().keys() == theirs.state_dict().keys()
    x, t = _pair((4, 9), seed=3)
    t = t.log() if ours.log_target else t
    got, got_warnings = _recorded(lambda: ours(x, t))
    want, want_warnings = _recorded(lambda: theirs(x, t))
    _assert_same(got, want, torch.float32)
    assert got_warnings == want_warnings


def _raised(function):
    with pytest.raises(Exception) as info:
        function()
    return info.type, str(info.value)


@pytest.mark.parametrize("case", [
    dict(x=torch.randn(3, 4), t=torch.rand(3, 5)),
    dict(x=torch.randn(2, 3, 4), t=torch.rand(5, 1, 4)),
    dict(x=torch.randn(3, 4), t=torch.rand(3, 4), reduction="average"),
    dict(x=torch.randn(3, 4), t=torch.rand(3, 4), reduction="elementwise_sum"),
], ids=["shape", "shape-3d", "reduction", "reduction-2"])
def test_errors_are_pytorchs(case):
    case = dict(case)
    x, t = case.pop("x"), case.pop("t")
    assert _raised(lambda: kldiv.torch.kl_div(x, t, **case)) == _raised(lambda: F.kl_div(x, t, **case))


def test_nothing_kldiv_does_not_take_goes_anywhere_but_pytorch():
    cases = [
        (torch.randn(3, 4), torch.rand(3, 4, dtype=torch.float64)),      # mixed dtypes: PyTorch promotes
        (torch.randn(3, 4, dtype=torch.float16), torch.rand(3, 4)),
        (torch.randint(0, 5, (3, 4)), torch.randint(0, 5, (3, 4))),      # integers: PyTorch's error
        (torch.randn(3, 4, dtype=torch.complex64), torch.randn(3, 4, dtype=torch.complex64)),
        (torch.randn(3, 4).to_sparse(), torch.rand(3, 4).to_sparse()),
        (torch.randn(3, 4, device="meta"), torch.rand(3, 4, device="meta")),
    ]
    for x, t in cases:
        for reduction in ("sum", "batchmean"):
            try:
                want = F.kl_div(x, t, reduction=reduction)
            except Exception as error:  # noqa: BLE001 (PyTorch's error is what must come)
                assert _raised(lambda: kldiv.torch.kl_div(x, t, reduction=reduction)) == (type(error), str(error))
                continue
            got = kldiv.torch.kl_div(x, t, reduction=reduction)
            assert got.dtype == want.dtype and got.shape == want.shape and got.device == want.device
            if want.device.type == "cpu":
                torch.testing.assert_close(got, want)


def test_outputs_are_new_tensors_and_inputs_stay_unchanged():
    x, t = _pair((5, 11), seed=4)
    x0, t0 = x.clone(), t.clone()
    x.requires_grad_()
    loss = kldiv.torch.kl_div(x, t, reduction="none")
    loss.sum().backward()
    assert torch.equal(x.detach(), x0) and torch.equal(t, t0)
    assert loss.data_ptr() not in (x.data_ptr(), t.data_ptr())


def test_eight_threads_at_once():
    inputs = [_pair((64, 257), dtype, seed=i) for i, dtype in enumerate(DTYPES * 2)]
    expected = [F.kl_div(x.double(), t.double(), reduction="batchmean").to(x.dtype) for x, t in inputs]
    results, errors = [None] * len(inputs), []
    barrier = threading.Barrier(len(inputs))

    def work(i):
        try:
            barrier.wait()
            x, t = inputs[i]
            for _ in range(50):
                loss = kldiv.torch.kl_div(x, t, reduction="batchmean")
            # Each thread reads its own error's text.
            with pytest.raises(RuntimeError, match=r"tensor a \(3\) must match the size of tensor b \(257\)"):
                kldiv.torch.kl_div(x, t[:, :3], reduction="batchmean")
            results[i] = loss
        except Exception as error:  # noqa: BLE001 (reported by the main thread)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for (x, _), got, want in zip(inputs, results, expected):
        _assert_same(got, want, x.dtype)


def test_package_finds_the_library_it_was_installed_with():
    environment = {k: v for k, v in os.environ.items() if k != "KLDIV_LIBRARY"}
    script = "import kldiv, kldiv.torch, torch; print(kldiv.library_path()); " \
             "print(float(kldiv.torch.kl_div(torch.zeros(2), torch.ones(2), reduction='sum')))"
    run = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True)
    path, value = run.stdout.split()
    assert Path(path) == Path(kldiv.__file__).with_name("libkldiv.so") and Path(path).is_file()
    assert float(value) == 0.0


def test_a_cache_directory_others_may_write_is_refused_with_one_python_warning(tmp_path):
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cache.chmod(0o777)
    script = ("import warnings, torch, kldiv.torch\n"
              "warnings.simplefilter('always')\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    for _ in range(3):\n"
              "        x = torch.randn(64, 100).log_softmax(-1)\n"
              "        print(float(kldiv.torch.kl_div(x, x.exp(), reduction='sum')))\n"
              "for w in caught:\n"
              "    print('WARNING', w.category.__name__, w.message)\n")
    environment = dict(os.environ, KLDIV_CACHE_DIR=str(cache), KLDIV_SPECIALIZE="always")
    run = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True)
    warned = [line for line in run.stdout.splitlines() if line.startswith("WARNING")]
    assert len(warned) == 1, run.stdout
    assert "UserWarning" in warned[0] and str(cache) in warned[0] and "writable by others" in warned[0]
    losses = [float(line) for line in run.stdout.splitlines() if not line.startswith("WARNING")]
    assert len(losses) == 3 and all(abs(v) < 1e-3 for v in losses)  # KL of a distribution to itself
    assert list(cache.iterdir()) == []  # nothing stored there
