"""The training model is the architecture vLLM serves: same names, same logits."""

import torch

from vllm_kvoffload.training import data
from vllm_kvoffload.training.export import export
from vllm_kvoffload.training.model import LlamaLM, ModelConfig

SMALL = ModelConfig(vocab_size=data.VOCAB_SIZE, hidden=64, layers=2, heads=4, kv_heads=2,
                    head_dim=16, intermediate=96, max_position=4096)


def _checkpoint(tmp_path, seed=0):
    torch.manual_seed(seed)
    model = LlamaLM(SMALL)
    with torch.no_grad():  # larger weights than init, so the comparison is not trivially ~0
        for p in model.parameters():
            p.normal_(0, 0.2 if p.dim() == 2 else 1.0)
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    torch.save({"config": SMALL.to_dict(), "state_dict": state, "steps": 0}, tmp_path / "ck.pt")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model


def test_exported_folder_matches_transformers_llama(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ours = _checkpoint(tmp_path).eval()
    folder = export(tmp_path / "ck.pt", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    text = "Below is a long text. The access code of the teal vault is 123456. Caf\u00e9 \u2019"
    ids = data.encode_prompt(text)
    tok = AutoTokenizer.from_pretrained(folder)
    chat = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   tokenize=True, return_dict=False)
    assert list(chat) == ids  # training format == what the chat endpoint feeds the model
    x = torch.tensor([ids])
    with torch.no_grad():
        a, b = ours(x), hf(x).logits
    assert (a - b).abs().max() < 1e-3 * b.abs().max()
    assert not torch.allclose(a[0, 0], a[0, -1])  # the logits do depend on the input


def test_kv_cache_decoding_equals_full_forward(tmp_path):
    model = _checkpoint(tmp_path, seed=1).eval()
    prompt = data.encode_prompt("needle: the jade chest is 424242")
    out = model.generate(prompt, 12, stop=-1)
    seq = list(prompt)
    for tok in out:  # recompute every step without a cache
        with torch.no_grad():
            assert int(model(torch.tensor([seq]))[0, -1].argmax()) == tok
        seq.append(tok)
    assert len(out) == 12
