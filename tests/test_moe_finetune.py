"""LoRA fine-tuning of a restructured tiny model: resumable, balancing bias, merge, save."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lowbit.moe.convert import load_restructured, restructure
from lowbit.moe.finetune import FinetuneConfig, finetune, merge_lora

CFG = FinetuneConfig(lr=1e-2, batch_size=2, save_every=1)


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    calib = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(1))
    restructure(model, "S2A2E8", calib, k_act=4)
    return model


def _seqs():
    return torch.randint(0, 96, (8, 32), generator=torch.Generator().manual_seed(2))


@pytest.mark.slow
def test_resume_merge_and_save(tmp_path):
    full = _model()
    losses = finetune(full, _seqs(), CFG)
    assert len(losses) == 4
    gate = full.model.layers[0].mlp.gate
    assert gate.e_score_correction_bias.abs().sum() > 0  # balancing moved during training
    assert gate.scale.abs().sum() > 0  # gate scales u train
    ckpt = tmp_path / "ft.pt"
    finetune(_model(), _seqs()[:4], CFG, checkpoint=ckpt)  # interrupted after 2 steps
    resumed = _model()
    assert len(finetune(resumed, _seqs(), CFG, checkpoint=ckpt)) == 2
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ids = _seqs()[:2]
    with torch.no_grad():
        before = full(ids).logits
        merge_lora(full)
        after = full(ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    assert not any("lora" in n or "parametrizations" in n for n, _ in full.named_parameters())
    full.save_pretrained(tmp_path / "ft")
    loaded = load_restructured(tmp_path / "ft")
    assert torch.equal(loaded.model.layers[0].mlp.gate.e_score_correction_bias,
                       gate.e_score_correction_bias)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, after)
