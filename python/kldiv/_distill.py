"""Distillation from logits on kldiv's kernels: ``kldiv.torch.distill_kl``."""
import math
import os
import typing

import torch
from torch.autograd.function import once_differentiable

from . import _ext, _lib
from ._kernels import CUSTOM_OP_DEVICES, DTYPES, HAS_OPS, new_gradient, runs_ops, scaled, use_stream
if HAS_OPS:
    from ._kernels import scaled_gradient

_REDUCTIONS = ("none", "sum", "mean", "batchmean")


def _options(temperature, reduction, reverse, temperature_squared, row_on):
    """kldiv_distill_options, as kldiv._ext takes them."""
    return (float(temperature), _lib.REDUCTIONS[reduction], int(bool(reverse)), int(bool(temperature_squared)),
            row_on.data_ptr() if row_on is not None else 0)


def _rows(logits):
    return math.prod(logits.shape[:-1])


def _loss_shape(logits, reduction):
    return tuple(logits.shape[:-1]) if reduction == "none" else ()


def _new_stats(logits):
    return torch.empty(_rows(logits) * _lib.DISTILL_STATS_PER_ROW, dtype=torch.float64)


def _forward(student, teacher, settings, row_on, want_stats):
    out = torch.empty(_loss_shape(student, settings[1]), dtype=student.dtype, device=student.device)
    stats = _new_stats(student) if want_stats else None
    use_stream(student)
    _ext.distill_forward(student, teacher, _options(*settings, row_on), out,
                         stats.data_ptr() if stats is not None else 0)
    return out, stats


def _forward_backward(student, teacher, settings, row_on):
    out = torch.empty(_loss_shape(student, settings[1]), dtype=student.dtype, device=student.device)
    grad = new_gradient(student)
    use_stream(student)
    _ext.distill_forward_backward(student, teacher, _options(*settings, row_on), out, grad)
    return out, grad


def _backward(grad_output, student, teacher, settings, row_on, stats, need_student, need_teacher):
    grad_student = torch.empty_like(student, memory_format=torch.contiguous_format) if need_student else None
    grad_teacher = torch.empty_like(teacher, memory_format=torch.contiguous_format) if need_teacher else None
    grad_output = grad_output.to(student.dtype).contiguous()
    use_stream(student)
    _ext.distill_backward(grad_output, student, teacher, _options(*settings, row_on), stats.data_ptr(), grad_student,
                          grad_teacher)
    return grad_student, grad_teacher


class _DistillFunction(torch.autograd.Function):
    """The loss, with the student's gradient from the fused pass when only it is needed."""

    @staticmethod
    def forward(ctx, student, teacher, row_on, temperature, reduction, reverse, temperature_squared):
        settings = (temperature, reduction, reverse, temperature_squared)
        ctx.settings = settings
        need_student, need_teacher = ctx.needs_input_grad[:2]
        # 'none' gives a gradient per row, which the fused pass (upstream 1) cannot know.
        ctx.fused = need_student and not need_teacher and reduction != "none"
        if ctx.fused:
            loss, grad = _forward_backward(student, teacher, settings, row_on)
            ctx.save_for_backward(grad)
        else:
            loss, stats = _forward(student, teacher, settings, row_on, want_stats=need_student or need_teacher)
            ctx.save_for_backward(student, teacher, row_on, stats)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        if ctx.fused:
            (grad,) = ctx.saved_tensors
            return scaled(grad, grad_output), None, None, None, None, None, None
        student, teacher, row_on, stats = ctx.saved_tensors
        need_student, need_teacher = ctx.needs_input_grad[:2]
        grad_student, grad_teacher = _backward(grad_output.contiguous(), student, teacher, ctx.settings, row_on,
                                               stats, need_student, need_teacher)
        return grad_student, grad_teacher, None, None, None, None, None


class _ShardedDistill(torch.autograd.Function):
    """The loss of logits sharded along the vocabulary across a process group.

    Each rank's forward kernel gives, per row, its shard's maximum and log-sum-exp
    of each operand and the loss under the shard's own softmax, L. With the whole
    row's log-sum-exps (one all-reduce of the maxima, one of the rescaled sums),
    a shard's softmax is the whole row's times a = exp(lse_shard - lse_row), and
    the shard adds a (L + log a_weight - log a_other) to the row's loss (a third
    all-reduce). Backward runs the backward kernel on the shard with the whole
    rows' statistics: each rank gets its shard's gradient.
    """

    @staticmethod
    def forward(ctx, student, teacher, row_on, group, temperature, reduction, reverse, temperature_squared,
                vocab):
        dist = torch.distributed
        settings = (temperature, "none", reverse, temperature_squared)
        rows = _rows(student)
        if student.shape[-1]:
            local = _forward(student, teacher, settings, row_on, want_stats=True)[1].view(rows, -1)
        else:  # an empty shard: no mass, no loss
            local = torch.zeros(rows, _lib.DISTILL_STATS_PER_ROW, dtype=torch.float64)
            local[:, 1::2] = -math.inf
        loss_local = local[:, 0]
        # A shard of -inf has no mass (its own statistics are NaN: 0/0).
        empty = local[:, 1::2] == -math.inf  # student's, teacher's
        lse_local = torch.where(empty, local[:, 1::2], local[:, 1::2] + local[:, 2::2])
        top = local[:, 1::2].clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        sums = torch.exp(lse_local - top)
        dist.all_reduce(sums, group=group)
        log_sums = torch.log(sums)
        log_share = lse_local - (top + log_sums)  # log a: student's, teacher's
        w, other = (0, 1) if reverse else (1, 0)
        share = torch.exp(log_share[:, w])
        part = share * (loss_local + log_share[:, w] - log_share[:, other])
        part = torch.where(share == 0, torch.zeros_like(part), part)
        # Mass where the other softmax has none on this shard: +inf (its own loss is NaN there).
        part = torch.where(empty[:, other] & (share > 0), torch.full_like(part, math.inf), part)
        if row_on is not None:
            part = torch.where(row_on.bool(), part, torch.zeros_like(part))
        dist.all_reduce(part, group=group)
        stats = torch.stack([part, top[:, 0], log_sums[:, 0], top[:, 1], log_sums[:, 1]], 1).contiguous()
        rows_on = int(row_on.sum()) if row_on is not None else rows
        factor = temperature * temperature if temperature_squared else 1.0
        divisor = {"none": 1.0, "sum": 1.0, "batchmean": rows_on, "mean": rows_on * vocab}[reduction]
        # (No rows: 0/0, NaN, as the unsharded call gives.)
        ctx.settings = (temperature, reduction, reverse, temperature_squared)
        ctx.scale = 1.0 / divisor if divisor else math.inf
        ctx.save_for_backward(student, teacher, row_on, stats)
        if reduction == "none":
            return (part * factor).to(student.dtype).view(student.shape[:-1])
        total = part.sum() * factor
        return (total / divisor if divisor else total * math.nan).to(student.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        student, teacher, row_on, stats = ctx.saved_tensors
        need_student, need_teacher = ctx.needs_input_grad[:2]
        temperature, reduction, reverse, temperature_squared = ctx.settings
        # The kernel's 'sum' with the divisor (which counts the whole vocabulary) in the upstream gradient.
        kernel_reduction = "none" if reduction == "none" else "sum"
        upstream = (grad_output * ctx.scale).contiguous()
        grad_student, grad_teacher = _backward(upstream, student, teacher,
                                               (temperature, kernel_reduction, reverse, temperature_squared),
                                               row_on, stats.view(-1), need_student, need_teacher)
        return grad_student, grad_teacher, None, None, None, None, None, None, None


def _composite(student, teacher, temperature, reduction, reverse, mask, temperature_squared):
    """The same loss from PyTorch's operators (tensors kldiv's kernels do not take)."""
    compute = torch.float64 if student.dtype == torch.float64 else torch.float32
    log_q = torch.log_softmax(student.to(compute) / temperature, -1)
    log_p = torch.log_softmax(teacher.to(compute) / temperature, -1)
    log_w, log_other = (log_q, log_p) if reverse else (log_p, log_q)
    w = log_w.exp()
    # 0 where the weight is 0, without the NaN of 0 * (-inf) in value or gradient.
    row = (w * torch.where(w == 0, torch.zeros_like(w), log_w - log_other)).sum(-1)
    if mask is not None:
        row = torch.where(mask, row, torch.zeros_like(row))
        rows_on = mask.sum()
    else:
        rows_on = torch.tensor(row.numel(), device=row.device)
    if temperature_squared:
        row = row * temperature ** 2
    if reduction == "none":
        return row.to(student.dtype)
    total = row.sum()
    if reduction == "batchmean":
        total = total / rows_on
    elif reduction == "mean":
        total = total / (rows_on * student.shape[-1])
    return total.to(student.dtype)


def distill_kl(student_logits, teacher_logits, temperature=1.0, reduction="batchmean", reverse=False, mask=None,
               temperature_squared=False, process_group=None):
    r"""KL divergence between the teacher's and the student's softmax at a temperature, per row.

    With ``p = softmax(teacher_logits / T)`` and ``q = softmax(student_logits / T)`` over
    the last dimension, a row's loss is ``sum_j p_j (log p_j - log q_j)`` (``reverse=True``:
    ``sum_j q_j (log q_j - log p_j)``). It equals

        kl_div(log_softmax(s / T, -1), log_softmax(t / T, -1), log_target=True)

    summed over the row, but a token the teacher gives probability 0 (logit ``-inf``)
    adds 0, where that composite gives NaN. No [rows, vocab] intermediate is made.

    Args:
        student_logits, teacher_logits: one shape ``[..., vocab]`` and dtype
            (float32, float64, float16, bfloat16).
        temperature: T > 0.
        reduction: ``'none'`` (the loss per row: the leading shape), ``'sum'``,
            ``'batchmean'`` (divided by the unmasked rows: the leading dimensions
            count as rows, as for logits flattened to ``[tokens, vocab]``) or
            ``'mean'`` (divided by unmasked rows times vocab).
        reverse: reverse KL.
        mask: ``None`` or a boolean tensor of the leading shape; False rows add
            nothing, leave the divisors, and get gradient 0.
        temperature_squared: multiply by T² (Hinton's convention).
        process_group: a ``torch.distributed`` group across whose ranks both logits
            are sharded along the vocabulary (vocabulary parallelism; shards may
            differ in size). Each rank passes its shards and gets the loss of the
            whole rows (three all-reduces of one or two values per row) and the
            gradients of its shards. ``None``: the logits are whole.

    Both logits may require grad. CPU tensors run kldiv's kernels; others run the
    same loss on PyTorch's operators.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if not isinstance(student_logits, torch.Tensor) or not isinstance(teacher_logits, torch.Tensor):
        raise TypeError("distill_kl: student_logits and teacher_logits must be tensors")
    if student_logits.shape != teacher_logits.shape:
        raise RuntimeError(f"distill_kl: student_logits has shape {tuple(student_logits.shape)} but teacher_logits "
                           f"has shape {tuple(teacher_logits.shape)}; the logits must have one shape")
    if student_logits.dim() == 0:
        raise RuntimeError("distill_kl: the logits need at least one dimension (the vocabulary)")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError("distill_kl: mask must be a boolean tensor")
        if tuple(mask.shape) != tuple(student_logits.shape[:-1]):
            raise RuntimeError(f"distill_kl: mask has shape {tuple(mask.shape)} but must have the logits' leading "
                               f"shape {tuple(student_logits.shape[:-1])}")
    on_cpu = (student_logits.device.type == "cpu" and teacher_logits.device.type == "cpu"
              and (mask is None or mask.device.type == "cpu"))
    takes = (student_logits.dtype in DTYPES and teacher_logits.dtype == student_logits.dtype
             and student_logits.layout == torch.strided and teacher_logits.layout == torch.strided
             and (on_cpu or (_cuda_kernels(student_logits, teacher_logits) and process_group is None)))
    if not takes:
        if process_group is not None:
            raise NotImplementedError("distill_kl: process_group takes CPU logits of float32, float64, float16 or "
                                      "bfloat16 in this version")
        return _composite(student_logits, teacher_logits, temperature, reduction, reverse, mask, temperature_squared)
    # The kernels take leading dimensions that view as one; other layouts are copied.
    student, teacher = (x if _one_row_dim(x) else x.contiguous() for x in (student_logits, teacher_logits))
    # The row mask is read on the host (for CUDA logits too: it sets the divisor).
    row_on = mask.reshape(-1).to(device="cpu", dtype=torch.uint8).contiguous() if mask is not None else None
    settings = (float(temperature), reduction, bool(reverse), bool(temperature_squared))
    if process_group is not None:
        vocab = torch.tensor([float(student.shape[-1])], dtype=torch.float64)
        torch.distributed.all_reduce(vocab, group=process_group)
        return _ShardedDistill.apply(student, teacher, row_on, process_group, *settings, int(vocab.item()))
    if runs_ops(student, teacher):
        return _loss_through_ops(student, teacher, row_on, *settings)
    if torch.is_grad_enabled() and (student.requires_grad or teacher.requires_grad):
        return _DistillFunction.apply(student, teacher, row_on, *settings)
    return _forward(student, teacher, settings, row_on, want_stats=False)[0]


def _cuda_kernels(student, teacher):
    """Whether CUDA logits run kldiv's CUDA kernels: built with them, asked for with
    KLDIV_DISTILL_CUDA=1 (they have not yet been tested on a GPU), one device, and
    rows of at least 32 logits (or none)."""
    return (os.environ.get("KLDIV_DISTILL_CUDA") == "1" and _lib.has_cuda and student.is_cuda
            and teacher.device == student.device and (student.shape[-1] >= 32 or student.shape[-1] == 0))


def _one_row_dim(x):
    """Whether x's leading dimensions view as one strided dimension (as the library needs)."""
    rows, stride = 1, 0
    for size, step in reversed(list(zip(x.shape[:-1], x.stride()[:-1]))):
        if size == 1:
            continue
        if rows > 1 and step != stride * rows:
            return False
        if rows == 1:
            stride = step
        rows *= size
    return True


# ---- Custom ops (torch 2.4 and later) ---------------------------------------
# What torch.compile, torch.export and dispatch modes see (kldiv._kernels.runs_ops),
# with the same kernels and autograd: the loss with the rows' statistics
# (backward reads them), the fused loss and student gradient, and the
# gradients. Eager calls on plain tensors take the autograd.Function above.

if HAS_OPS:

    @torch.library.custom_op("kldiv::distill_kl", mutates_args=(), device_types=CUSTOM_OP_DEVICES)
    def _distill_op(student: torch.Tensor, teacher: torch.Tensor, row_on: typing.Optional[torch.Tensor],
                    temperature: float, reduction: str, reverse: bool,
                    temperature_squared: bool) -> typing.Tuple[torch.Tensor, torch.Tensor]:
        return _forward(student, teacher, (temperature, reduction, reverse, temperature_squared), row_on,
                        want_stats=True)

    @_distill_op.register_fake
    def _(student, teacher, row_on, temperature, reduction, reverse, temperature_squared):
        # The statistics live on the host, for CUDA logits too.
        return (student.new_empty(_loss_shape(student, reduction)),
                torch.empty(_rows(student) * _lib.DISTILL_STATS_PER_ROW, dtype=torch.float64))

    @torch.library.custom_op("kldiv::distill_kl_forward_backward", mutates_args=(), device_types=CUSTOM_OP_DEVICES)
    def _distill_fused_op(student: torch.Tensor, teacher: torch.Tensor, row_on: typing.Optional[torch.Tensor],
                          temperature: float, reduction: str, reverse: bool,
                          temperature_squared: bool) -> typing.Tuple[torch.Tensor, torch.Tensor]:
        return _forward_backward(student, teacher, (temperature, reduction, reverse, temperature_squared), row_on)

    @_distill_fused_op.register_fake
    def _(student, teacher, row_on, temperature, reduction, reverse, temperature_squared):
        return student.new_empty(_loss_shape(student, reduction)), student.new_empty(student.shape)

    @torch.library.custom_op("kldiv::distill_kl_backward", mutates_args=(), device_types=CUSTOM_OP_DEVICES)
    def _distill_backward_op(grad_output: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor,
                             row_on: typing.Optional[torch.Tensor], stats: torch.Tensor, temperature: float,
                             reduction: str, reverse: bool, temperature_squared: bool, need_student: bool,
                             need_teacher: bool) -> typing.Tuple[torch.Tensor, torch.Tensor]:
        grad_student, grad_teacher = _backward(grad_output.contiguous(), student, teacher,
                                               (temperature, reduction, reverse, temperature_squared), row_on,
                                               stats, need_student, need_teacher)
        # A custom op returns tensors: an empty one stands for a gradient not asked for.
        return (grad_student if need_student else student.new_empty(0),
                grad_teacher if need_teacher else teacher.new_empty(0))

    @_distill_backward_op.register_fake
    def _(grad_output, student, teacher, row_on, stats, temperature, reduction, reverse, temperature_squared,
          need_student, need_teacher):
        return (student.new_empty(student.shape if need_student else 0),
                teacher.new_empty(teacher.shape if need_teacher else 0))

    def _setup_distill(ctx, inputs, output):
        student, teacher, row_on, *settings = inputs
        ctx.settings = tuple(settings)
        ctx.save_for_backward(student, teacher, row_on, output[1])

    def _backward_distill(ctx, grad_loss, grad_of_stats):
        student, teacher, row_on, stats = ctx.saved_tensors
        need_student, need_teacher = ctx.needs_input_grad[:2]
        grad_student, grad_teacher = _distill_backward_op(grad_loss, student, teacher, row_on, stats, *ctx.settings,
                                                          need_student, need_teacher)
        return ((grad_student if need_student else None), (grad_teacher if need_teacher else None),
                None, None, None, None, None)

    def _setup_fused(ctx, inputs, output):
        ctx.save_for_backward(output[1])

    def _backward_fused(ctx, grad_loss, grad_of_grad):
        (grad,) = ctx.saved_tensors
        return scaled_gradient(grad, grad_loss), None, None, None, None, None, None

    torch.library.register_autograd("kldiv::distill_kl", _backward_distill, setup_context=_setup_distill)
    torch.library.register_autograd("kldiv::distill_kl_forward_backward", _backward_fused,
                                    setup_context=_setup_fused)


def _loss_through_ops(student, teacher, row_on, temperature, reduction, reverse, temperature_squared):
    """distill_kl through the custom ops: fused when only the student needs a gradient."""
    settings = (temperature, reduction, reverse, temperature_squared)
    if torch.is_grad_enabled() and student.requires_grad and not teacher.requires_grad and reduction != "none":
        return _distill_fused_op(student, teacher, row_on, *settings)[0]
    return _distill_op(student, teacher, row_on, *settings)[0]

