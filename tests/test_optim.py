"""The optimizer and schedule switches: ULMFiT's slanted triangular schedule against the formula
worked by hand, AdamW without bias correction against a hand-written update (transformers' old
``AdamW(correct_bias=False)``), the default still torch's AdamW bit for bit, and both through a
state-dict round trip. Exact resume through ``train()``: tests/test_resume.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrasent.core.errors import UserError
from contrasent.data.registry import DataSpec
from contrasent.train.config import ModelConfig, OptimConfig, TrainConfig
from contrasent.train.optim import (
    UncorrectedAdamW,
    build_optimizer,
    build_scheduler,
    slanted_triangular,
)

LR = 5e-5


def _lrs(total: int, **kwargs) -> list[float]:
    """The lr of optimizer steps t = 0 .. total, as the loop sees them (scheduler after step)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    sched = build_scheduler(opt, "slanted_triangular", 0, total, **kwargs)
    out = []
    for _ in range(total + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_slanted_triangular_against_the_formula_by_hand():
    # T = 100, cut_frac 0.1, ratio 32: cut = 10, decay length 10 * (1 / 0.1 - 1) = 90
    lrs = _lrs(100, cut_frac=0.1, ratio=32)
    by_hand = {
        0: LR / 32,  # p = 0: the reference's value as it ran (1.5625e-6 at lr 5e-5)
        5: LR * (1 + 0.5 * 31) / 32,  # p = 5 / 10
        9: LR * (1 + 0.9 * 31) / 32,
        10: LR,  # t = cut: the peak
        19: LR * (1 + (1 - 9 / 90) * 31) / 32,
        55: LR * (1 + 0.5 * 31) / 32,  # p = 1 - 45 / 90
        100: LR / 32,  # t = T: p = 0
    }
    for t, want in by_hand.items():
        assert lrs[t] == pytest.approx(want, rel=1e-12), t
    assert lrs[0] == pytest.approx(1.5625e-6, rel=1e-12)
    assert max(lrs) == pytest.approx(LR, rel=1e-12) and lrs.index(max(lrs)) == 10
    # other settings: T = 40, cut_frac 0.25, ratio 4 -> cut 10, decay length 30
    lrs = _lrs(40, cut_frac=0.25, ratio=4)
    assert lrs[0] == pytest.approx(LR / 4) and lrs[10] == pytest.approx(LR)
    assert lrs[25] == pytest.approx(LR * (1 + 0.5 * 3) / 4) and lrs[40] == pytest.approx(LR / 4)


def test_slanted_triangular_holds_at_the_floor_where_the_formula_ends_early():
    # T = 105: cut = floor(10.5) = 10, decay length 90, so the formula reaches lr/32 at t = 100
    # and would go on down (negative at t = 103); it is held at lr/32
    assert slanted_triangular(100, 105, 0.1, 32) == pytest.approx(1 / 32)
    assert [slanted_triangular(t, 105, 0.1, 32) for t in (101, 103, 105)] == [1 / 32] * 3
    assert min(_lrs(105)) == pytest.approx(LR / 32)


def test_slanted_triangular_refusals():
    with pytest.raises(UserError, match="less than one warm-up step"):
        slanted_triangular(0, 9, 0.1, 32)  # floor(0.9) = 0
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=LR)
    with pytest.raises(ValueError, match="own warm-up"):
        build_scheduler(opt, "slanted_triangular", 5, 100)

    def cfg(**train) -> TrainConfig:
        return TrainConfig(
            model=ModelConfig("bert-base-uncased"),
            objective={"name": "simcse_unsup"},
            data=DataSpec(kind="text", path="x.txt"),
            train=OptimConfig(max_steps=10, **train),
            output_dir="out",
        )

    for bad, message in [
        ({"lr_schedule": "slanted_triangular", "warmup_ratio": 0.1}, "warms up by itself"),
        ({"cut_frac": 1.0}, "cut_frac must be in"),
        ({"ratio": 0.5}, "ratio >= 1"),
        ({"adam_eps": 0.0}, "adam_eps must be > 0"),
    ]:
        with pytest.raises(UserError, match=message):
            cfg(**bad).validate()


# ----------------------------------------------------------------------------- the optimizer


class Tiny(nn.Module):
    """A weight matrix (decayed) and a bias and LayerNorm (never decayed)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)


def _tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny().double()


def _grads(step: int, model: nn.Module) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.parameters()]


def _run(opt: torch.optim.Optimizer, model: nn.Module, steps: range) -> None:
    for step in steps:
        for p, g in zip(model.parameters(), _grads(step, model), strict=True):
            p.grad = g
        opt.step()


def _by_hand(model: nn.Module, steps: int, lr, wd, eps, betas=(0.9, 0.999)) -> dict:
    """The reference update, written out: raw moments, no 1 - beta^t, decay after the step."""
    b1, b2 = betas
    out = {}
    for (name, p0), *gs in zip(
        model.named_parameters(), *[_grads(s, model) for s in range(steps)], strict=True
    ):
        p, m, v = p0.detach().clone(), torch.zeros_like(p0), torch.zeros_like(p0)
        decay = wd if name == "linear.weight" else 0.0
        for g in gs:
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            p = p - lr * m / (torch.sqrt(v) + eps)
            p = p - lr * decay * p
        out[name] = p
    return out


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_uncorrected_adamw_is_the_hand_written_update(wd):
    model = _tiny()
    want = _by_hand(model, 5, lr=1e-2, wd=wd, eps=1e-6)
    opt = build_optimizer(model, lr=1e-2, weight_decay=wd, eps=1e-6, bias_correction=False)
    assert type(opt) is UncorrectedAdamW
    _run(opt, model, range(5))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), want[name], rtol=1e-13, atol=0, msg=name)
    # teeth: torch's bias-corrected AdamW ends elsewhere
    other = _tiny()
    _run(build_optimizer(other, lr=1e-2, weight_decay=wd, eps=1e-6), other, range(5))
    assert not torch.allclose(other.linear.weight, model.linear.weight, rtol=1e-3)


def test_uncorrected_first_step_is_about_3_lr():
    """Without correction the first update is lr (1 - b1) / sqrt(1 - b2) = 3.16 lr per
    coordinate (up to eps), where bias-corrected Adam moves lr: the effect on early steps."""
    model = _tiny()
    before = model.linear.weight.detach().clone()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.0, eps=1e-12, bias_correction=False)
    _run(opt, model, range(1))
    moved = (model.linear.weight.detach() - before).abs()
    torch.testing.assert_close(moved, torch.full_like(moved, 1e-3 * 0.1 / 0.001**0.5))


def test_default_is_torch_adamw_bit_for_bit():
    model, same = _tiny(), _tiny()
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    assert type(opt) is torch.optim.AdamW and opt.defaults["eps"] == 1e-8
    groups = [
        {"params": [same.linear.weight], "weight_decay": 0.1},
        {"params": [same.linear.bias, *same.norm.parameters()], "weight_decay": 0.0},
    ]
    ref = torch.optim.AdamW(groups, lr=1e-2, fused=opt.defaults["fused"])
    _run(opt, model, range(4))
    _run(ref, same, range(4))
    for (name, p), q in zip(model.named_parameters(), same.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("bias_correction", [True, False])
def test_state_dict_round_trip_continues_bitwise(bias_correction):
    def build(model):
        return build_optimizer(
            model, lr=1e-2, weight_decay=0.1, eps=1e-6, bias_correction=bias_correction
        )

    straight = _tiny()
    _run(build(straight), straight, range(6))
    model = _tiny()
    opt = build(model)
    _run(opt, model, range(3))
    saved = ({k: v.clone() for k, v in model.state_dict().items()}, opt.state_dict())
    resumed = _tiny()
    resumed.load_state_dict(saved[0])
    opt = build(resumed)
    opt.load_state_dict(saved[1])
    _run(opt, resumed, range(3, 6))
    for (name, p), q in zip(resumed.named_parameters(), straight.parameters(), strict=True):
        assert torch.equal(p, q), name
