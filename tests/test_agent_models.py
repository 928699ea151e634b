"""Backends and persona tokens: tiny Qwen3 + trained tokenizer, persona tokens, stage-1 freezing,
save → load round trip; SmolLM2 loading (slow, SIMPERSONA_SLOW=1)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from agent.generate import GenerationSettings
from agent.llm_policy import LLMPolicy
from agent.models import load_base, load_local, load_tiny, smollm2_gguf_path
from agent.persona import PersonaMap, add_persona_tokens, persona_token_ids
from agent.prompt import render_prompt
from agent.sft import Runtime, SFTConfig, TrainResult, build_examples, run_stage1, save_agent
from agent.traces import make_synthetic_traces
from harness.sim.policies import policy_record

torch.set_num_threads(1)
TRACES = make_synthetic_traces(6, seed=0, compact=True)
TEXTS = [s.observation for t in TRACES for s in t.steps] + [s.action for t in TRACES for s in t.steps]


@pytest.fixture()
def tiny():
    return load_tiny(TEXTS)


def test_tiny_backend_is_a_small_qwen3_with_a_chat_template(tiny):
    assert tiny.model.config.model_type == "qwen3"
    assert sum(p.numel() for p in tiny.model.parameters()) < 100_000
    assert tiny.model.config.tie_word_embeddings
    prompt = tiny.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tiny.tokenizer("click [12]", add_special_tokens=False).input_ids
    assert len(ids) <= 4  # grammar words are units, not bytes
    assert tiny.tokenizer.decode(ids) == "click [12]"


def test_persona_tokens_are_single_special_tokens_mapped_by_code(tiny):
    old_rows = tiny.model.get_input_embeddings().weight.shape[0]
    persona_map = add_persona_tokens(tiny.model, tiny.tokenizer, num_codes=3)
    assert persona_map.code_to_token == {0: "<persona_0>", 1: "<persona_1>", 2: "<persona_2>"}
    assert persona_map.token_for(2) == "<persona_2>" and persona_map.token_for(2, neutral=True) == "<persona_neutral>"
    with pytest.raises(KeyError, match="persona code 7 is not in persona.json"):
        persona_map.token_for(7)
    ids = persona_token_ids(tiny.tokenizer, persona_map)
    assert ids == list(range(old_rows, old_rows + 4))
    for token, token_id in zip(persona_map.tokens, ids):
        assert tiny.tokenizer(f"x {token} y", add_special_tokens=False).input_ids.count(token_id) == 1
    assert tiny.tokenizer.decode(ids, skip_special_tokens=True) == ""
    assert tiny.model.get_input_embeddings().weight.shape[0] == old_rows + 4
    assert tiny.model.get_output_embeddings().weight is tiny.model.get_input_embeddings().weight  # still tied


def test_mean_init_keeps_new_rows_near_the_vocabulary_mean_and_neutral_exactly_on_it(tiny):
    old = tiny.model.get_input_embeddings().weight.detach().clone()
    add_persona_tokens(tiny.model, tiny.tokenizer, num_codes=4, init="mean", noise_scale=0.1, seed=0)
    new = tiny.model.get_input_embeddings().weight.detach()
    assert torch.equal(new[: len(old)], old)
    mean, spread = old.mean(0), old.std(0)
    assert torch.allclose(new[-1], mean)  # neutral: the plain mean
    codes = new[len(old) : -1]
    assert not torch.equal(codes[0], codes[1])
    assert ((codes - mean).abs() < 0.6 * spread).float().mean() > 0.99  # 0.1 std noise stays well inside


def test_centroid_init_preserves_codebook_neighbourhoods(tiny):
    centroids = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [5.0, 5.0, 5.0]])
    old_rows = tiny.model.get_input_embeddings().weight.shape[0]
    add_persona_tokens(tiny.model, tiny.tokenizer, num_codes=3, init="centroid", centroids=centroids)
    rows = tiny.model.get_input_embeddings().weight.detach()[old_rows : old_rows + 3]
    assert torch.dist(rows[0], rows[1]) < 0.1 * torch.dist(rows[0], rows[2])
    with pytest.raises(ValueError, match="one centroid per code"):
        add_persona_tokens(load_tiny(TEXTS).model, load_tiny(TEXTS).tokenizer, 4, init="centroid", centroids=centroids)


def test_untied_output_rows_get_the_mean_output_row():
    local = load_tiny(TEXTS)
    local.model.config.tie_word_embeddings = False
    local.model.lm_head.weight = torch.nn.Parameter(torch.randn_like(local.model.lm_head.weight))
    old_output = local.model.lm_head.weight.detach().clone()
    add_persona_tokens(local.model, local.tokenizer, num_codes=2)
    output = local.model.lm_head.weight.detach()
    assert output.data_ptr() != local.model.get_input_embeddings().weight.data_ptr()
    assert torch.equal(output[: len(old_output)], old_output)
    assert torch.allclose(output[-1], old_output.mean(0), atol=1e-6)


def test_stage1_trains_only_persona_rows_every_other_weight_bit_identical(tiny):
    persona_map = add_persona_tokens(tiny.model, tiny.tokenizer, num_codes=2, noise_scale=1.0)
    persona_ids = persona_token_ids(tiny.tokenizer, persona_map)
    before = {name: tensor.clone() for name, tensor in tiny.model.state_dict().items()}
    config = SFTConfig(stage1_epochs=1, stage1_lr=1e-2, batch_size=4, stage1_max_steps=4)
    examples = build_examples(TRACES, tiny.tokenizer, persona_map, config)
    curves = []
    record = run_stage1(tiny.model, persona_ids, examples, config, Runtime.from_config(config), tiny.tokenizer.pad_token_id, curves)
    assert len(curves) == 4 and record["steps"] == 4 and record["stopped_by"] == "max_steps"
    after = tiny.model.state_dict()
    for name, tensor in before.items():
        if name in ("model.embed_tokens.weight", "lm_head.weight"):  # the tied matrix
            others = [i for i in range(len(tensor)) if i not in persona_ids]
            assert torch.equal(after[name][others], tensor[others]), name
            assert not torch.equal(after[name][persona_ids[:-1]], tensor[persona_ids[:-1]]), "persona rows did not train"
        else:
            assert torch.equal(after[name], tensor), f"{name} changed in stage 1"
    assert all(p.requires_grad for p in tiny.model.parameters())  # unfrozen again for stage 2


def test_save_load_round_trip_keeps_persona_tokens_and_weights(tiny, tmp_path):
    persona_map = add_persona_tokens(tiny.model, tiny.tokenizer, num_codes=3)
    out = save_agent(TrainResult(tiny, persona_map, curves=[]), tmp_path / "agent")
    assert {"config.json", "model.safetensors", "tokenizer.json", "persona.json", "generation_config.json"} <= {p.name for p in out.iterdir()}

    loaded = load_local(out)
    assert PersonaMap.load(out) == persona_map
    prompt = render_prompt(loaded.tokenizer, persona_map.token_for(1), TRACES[0].steps[0].observation, [])
    assert loaded.tokenizer(prompt, add_special_tokens=False).input_ids == tiny.tokenizer(prompt, add_special_tokens=False).input_ids
    assert persona_token_ids(loaded.tokenizer, persona_map) == persona_token_ids(tiny.tokenizer, persona_map)
    ids = torch.tensor([tiny.tokenizer(prompt, add_special_tokens=False).input_ids])
    with torch.inference_mode():
        assert torch.equal(loaded.model(input_ids=ids).logits, tiny.model.eval()(input_ids=ids).logits)
    assert load_base(str(out)).name == "agent"
    with pytest.raises(ValueError, match="--base must be 'tiny', 'smollm2' or a model directory"):
        load_base(str(tmp_path / "missing"))


def test_an_agent_loaded_at_bf16_on_a_cpu_keeps_fp32_weights_and_computes_its_matmuls_in_bf16(tiny, tmp_path):
    persona_map = add_persona_tokens(tiny.model, tiny.tokenizer, num_codes=2)
    out = save_agent(TrainResult(tiny, persona_map, curves=[]), tmp_path / "agent")
    seen = {}
    for precision in ("auto", "bf16", "fp32"):
        backend = load_local(out, device="cpu", precision=precision)
        assert {p.dtype for p in backend.model.parameters()} == {torch.float32}
        layer = backend.model.model.layers[0].mlp.down_proj
        handle = layer.register_forward_hook(lambda module, args, output, key=precision: seen.setdefault(key, output.dtype) and None)
        prompt = render_prompt(backend.tokenizer, persona_map.token_for(1), TRACES[0].steps[0].observation, [])
        answer = backend.generate([prompt], GenerationSettings(max_new_tokens=4))
        handle.remove()
        assert len(answer.texts) == 1 and answer.completion_tokens[0] >= 1
    assert seen == {"auto": torch.float32, "bf16": torch.bfloat16, "fp32": torch.float32}
    bf16 = LLMPolicy.from_dir(out, device="cpu", precision="bf16")
    assert policy_record(bf16)["autocast"] == "bfloat16" and "autocast" not in policy_record(LLMPolicy.from_dir(out, device="cpu"))
    with pytest.raises(ValueError, match="precision must be one of"):
        load_local(out, precision="fp16")


def test_persona_json_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="persona.json: missing"):
        PersonaMap.load(tmp_path)
    (tmp_path / "persona.json").write_text('{"num_codes": 2}')
    with pytest.raises(ValueError, match="persona.json: expected"):
        PersonaMap.load(tmp_path)


def test_smollm2_gguf_ships_with_the_package():
    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SIMPERSONA_SLOW") != "1", reason="loads SmolLM2-135M (set SIMPERSONA_SLOW=1)")
def test_smollm2_loads_offline_and_takes_persona_tokens():
    from agent.models import load_smollm2

    local = load_smollm2()
    assert local.model.config.model_type == "llama" and local.model.config.tie_word_embeddings
    assert local.tokenizer.eos_token == "<|im_end|>"
    persona_map = add_persona_tokens(local.model, local.tokenizer, num_codes=2)
    assert len(persona_token_ids(local.tokenizer, persona_map)) == 3
    result = local.generate([render_prompt(local.tokenizer, "<persona_0>", TRACES[0].steps[0].observation, [])])
    assert result.completion_tokens[0] > 0
