import math

import pytest
import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from medtune.config import TrainConfig
from medtune.train.schedules import build_scheduler, warmup_steps


def _lrs(make, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    sched = make(opt)
    values = []
    for _ in range(steps):
        values.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return values


@pytest.mark.parametrize(
    "schedule,warmup_ratio,reference",
    [
        ("linear", 0.0, lambda o, w, n: get_linear_schedule_with_warmup(o, w, n)),
        ("cosine", 0.1, lambda o, w, n: get_cosine_schedule_with_warmup(o, w, n)),
        ("constant", 0.05, lambda o, w, n: get_constant_schedule_with_warmup(o, w)),
    ],
)
def test_schedule_equals_transformers_at_every_step(schedule, warmup_ratio, reference):
    total = 400
    cfg = TrainConfig(schedule=schedule, warmup_ratio=warmup_ratio, lr=2e-4)
    warm = math.ceil(total * warmup_ratio)
    ours = _lrs(lambda o: build_scheduler(o, cfg, total), total)
    theirs = _lrs(lambda o: reference(o, warm, total), total)
    assert ours == theirs


def test_reference_values_v1_and_v2():
    """Spot values by formula: v1 linear decays from 2e-4; v2 cosine warms up over 40 of 400 steps."""
    v1 = _lrs(lambda o: build_scheduler(o, TrainConfig(schedule="linear"), 400), 400)
    assert v1[0] == pytest.approx(2e-4) and v1[200] == pytest.approx(1e-4) and v1[399] == pytest.approx(2e-4 / 400)
    v2 = _lrs(lambda o: build_scheduler(o, TrainConfig(schedule="cosine", warmup_ratio=0.1), 400), 400)
    assert v2[0] == 0.0 and v2[20] == pytest.approx(1e-4) and v2[40] == pytest.approx(2e-4)
    assert v2[220] == pytest.approx(2e-4 * 0.5 * (1 + math.cos(math.pi * 180 / 360)))


def test_warmup_steps_explicit_wins():
    assert warmup_steps(TrainConfig(warmup_steps=7), 400) == 7
    assert warmup_steps(TrainConfig(warmup_ratio=0.1), 401) == 41
