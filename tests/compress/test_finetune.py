"""Fine-tuning with distillation: the teacher runs once over the training tensors, not once per step."""

import copy

import pytest
import torch

import search_spaces as ss
from nas.compress._train import finetune
from nas.cores import torch_threads
from nas.train import teacher_logits

ARCH = ss.decode("r16_i1_n10:stem_c16_s1_re6:ds_k3_c16_re6:ir_k3_e3_c24_re6:head_c64_re6")


def _data(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_teacher_logits_equal_the_teachers_outputs_in_eval_mode():
    torch.manual_seed(0)
    teacher = ss.build(ARCH).train()
    x, _ = _data()
    soft = teacher_logits(teacher, x, batch_size=128)
    assert not teacher.training
    with torch.no_grad():
        torch.testing.assert_close(soft, teacher(x), rtol=1e-5, atol=1e-5)


def test_finetune_runs_the_teacher_once_per_batch_of_the_data_and_uses_it():
    torch.manual_seed(0)
    student, teacher = ss.build(ARCH), ss.build(ARCH)
    x, y = _data()
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    distilled = finetune(copy.deepcopy(student), x, y, steps=12, teacher=teacher, batch_size=32)
    assert calls == [256, 44]  # 300 images in two passes, not 12 steps x 32 images
    plain = finetune(copy.deepcopy(student), x, y, steps=12, teacher=None, batch_size=32)
    w = [p for n, p in distilled.named_parameters() if n.endswith("conv.weight")][0]
    w0 = [p for n, p in plain.named_parameters() if n.endswith("conv.weight")][0]
    assert not torch.allclose(w, w0)  # the distillation term changed the updates


def test_precomputed_teacher_outputs_give_the_same_fine_tuning_without_running_the_teacher():
    torch.manual_seed(0)
    student, teacher = ss.build(ARCH), ss.build(ARCH)
    x, y = _data()
    # one thread in both runs: fine-tuning re-sizes its threads to the cores other processes leave free
    # (nas.cores), and another thread count sums the gradients in another order (1-ulp differences, seen in CI)
    with torch_threads(1):
        a = finetune(copy.deepcopy(student), x, y, steps=6, teacher=teacher, batch_size=32)
        soft = teacher_logits(teacher, x)
        calls = []
        teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
        b = finetune(copy.deepcopy(student), x, y, steps=6, teacher=teacher, batch_size=32, teacher_out=soft)
    assert calls == []
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), n


def test_teacher_outputs_of_the_wrong_length_are_rejected():
    x, y = _data(40)
    with pytest.raises(ValueError, match="teacher_out: expected one row per image of x \\(40\\)"):
        finetune(ss.build(ARCH), x, y, steps=2, teacher_out=torch.zeros(39, 10))
