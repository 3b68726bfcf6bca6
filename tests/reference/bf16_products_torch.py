"""torch with every matrix product's operands rounded to bfloat16 and float32
accumulation: calign's bf16_products arithmetic, written independently.

Inside `with BF16Products():`, torch.matmul/mm/bmm/einsum, F.linear and addmm
(the products of transformers' GPT-2, Llama and Qwen layers with eager
attention, of PEFT's LoRA and of reference/motif_torch.py) compute
grad_rounded(rounded(a) @ rounded(b)): the forward multiplies rounded
operands in float32, and the backward rounds the incoming gradient before
autograd's two products with the (saved, rounded) operands, so that
dA = round(dY) round(B)^T and dB = round(A)^T round(dY) as in calign.
Everything else runs in float32 as usual."""

import torch
from torch.overrides import TorchFunctionMode

F = torch.nn.functional


class Rounded(torch.autograd.Function):
    """Forward: x rounded to bfloat16 (held in float32); backward: the gradient as is."""

    @staticmethod
    def forward(ctx, x):
        return x.to(torch.bfloat16).float()

    @staticmethod
    def backward(ctx, grad):
        return grad


class GradRounded(torch.autograd.Function):
    """Forward: x as is; backward: the gradient rounded to bfloat16."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(torch.bfloat16).float()


PRODUCTS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.mm)


class BF16Products(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCTS:
            return GradRounded.apply(func(Rounded.apply(args[0]), Rounded.apply(args[1])))
        if func is torch.einsum:
            equation, *operands = args
            return GradRounded.apply(torch.einsum(equation, *map(Rounded.apply, operands)))
        if func is F.linear:
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            out = GradRounded.apply(F.linear(Rounded.apply(args[0]), Rounded.apply(args[1])))
            return out if bias is None else out + bias
        if func is torch.addmm:  # GPT-2's Conv1D: bias + x @ W
            assert not kwargs and len(args) == 3, "addmm with beta/alpha is not covered"
            product = torch.mm(Rounded.apply(args[1]), Rounded.apply(args[2]))
            return args[0] + GradRounded.apply(product)
        return func(*args, **kwargs)
