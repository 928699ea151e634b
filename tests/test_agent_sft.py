"""Two-stage SFT on the tiny Qwen3: traces I/O, loss masking, batching, and the controlled persona check.

The controlled check: persona A (code 0) always buys at the product page, persona B (code 1)
always leaves; the pages before the decision come from one distribution for both. After stage 1 +
stage 2 the gap log P("click [Add to cart id]") − log P("stop") at held-out product pages must be
larger under A's token than under B's, and swapping the neutral token in for both groups must
remove most of the group difference.
"""

from __future__ import annotations

import json
import os
import random
import statistics
from dataclasses import replace

import pytest
import torch

from agent.generate import score_answers
from agent.models import TinyModelConfig, load_local, load_tiny
from agent.persona import PersonaMap, add_persona_tokens, persona_token_ids
from agent.prompt import render_prompt
from agent.sft import (
    IGNORE_INDEX,
    Example,
    SFTConfig,
    action_loss,
    anchor_steps,
    build_examples,
    collate,
    continue_agent,
    epoch_examples,
    random_batches,
    save_agent,
    train_agent,
)
from agent.traces import (
    Step,
    Trace,
    TraceError,
    cart_decision_step,
    decision_index,
    make_synthetic_traces,
    read_traces,
    rename_shop,
    write_traces,
)

torch.set_num_threads(1)  # the machine is shared; one thread wastes least time waiting


def _texts(traces):
    return [s.observation for t in traces for s in t.steps] + [s.action for t in traces for s in t.steps]


# --- traces.jsonl -----------------------------------------------------------------------------------


def test_traces_round_trip_and_errors_name_file_line_and_step(tmp_path):
    traces = make_synthetic_traces(6, seed=1)
    path = write_traces(traces, tmp_path / "traces.jsonl")
    assert read_traces(path) == traces

    record = json.loads(traces[0].to_json())
    record["steps"][1]["action"] = "purchase [3]"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(traces[1].to_json() + "\n" + json.dumps(record) + "\n")
    with pytest.raises(TraceError, match=r"bad.jsonl:2, step 1: invalid action: unknown action 'purchase'"):
        read_traces(bad)
    del record["code"]
    bad.write_text(json.dumps(record) + "\n")
    with pytest.raises(TraceError, match=r"bad.jsonl:1: missing field 'code'"):
        read_traces(bad)
    bad.write_text("{not json\n")
    with pytest.raises(TraceError, match=r"bad.jsonl:1: not valid JSON"):
        read_traces(bad)


def test_synthetic_decision_page_is_the_only_difference_between_behaviours():
    buyers = make_synthetic_traces(2, {0: "buy"}, seed=5)
    leavers = make_synthetic_traces(2, {1: "leave"}, seed=5)
    for buyer, leaver in zip(buyers, leavers):
        index = decision_index(buyer)
        assert [s.observation for s in buyer.steps[: index + 1]] == [s.observation for s in leaver.steps[: index + 1]]
        assert buyer.steps[index].action.startswith("click [") and leaver.steps[index].action == "stop"
        assert buyer.converted and not leaver.converted


# --- examples and batches ------------------------------------------------------------------------------


def test_loss_covers_the_action_tokens_only():
    traces = make_synthetic_traces(3, seed=2, compact=True)
    local = load_tiny(_texts(traces))
    persona_map = PersonaMap.for_codes(2)
    local.tokenizer.add_special_tokens({"extra_special_tokens": persona_map.tokens})
    examples = build_examples(traces, local.tokenizer, persona_map, SFTConfig(neutral_dropout=0.0))
    assert len(examples) == sum(len(t.steps) for t in traces)
    steps = [s for t in traces for s in t.steps]
    for example, step in zip(examples, steps):
        answer = [label for label in example.labels if label != IGNORE_INDEX]
        assert local.tokenizer.decode(answer) == step.action + local.tokenizer.eos_token
        first = example.labels.index(answer[0])
        assert all(label == IGNORE_INDEX for label in example.labels[:first])
        assert example.input_ids[first:] == answer


def _tmall_like_trace(shop="10072"):
    page = (f"URL: http://127.0.0.1/p/brand%3A{shop}\nHeading: Brand {shop} (all items)\n"
            f"[8] link \"Brand {shop} (all items)\"\n[10] button \"Add to cart\" — {shop} €103.99 (also at 1{shop}0)")
    return Trace(shop, "b1", 3, [Step(page, "click [10]"), Step(page, f'type [2] "Brand {shop} (all items)"')], True)


def test_rename_shop_replaces_the_id_everywhere_and_nothing_else():
    trace = _tmall_like_trace()
    renamed = rename_shop(trace, random.Random(7))
    fresh = renamed.shop_id
    assert fresh != "10072" and len(fresh) == 5 and fresh.isdigit() and not fresh.startswith("0")
    page = renamed.steps[0].observation
    assert "10072" not in page.replace("1100720", "") and page.count(fresh) == 4
    assert "1100720" in page and "€103.99" in page and "[10]" in page  # other numbers stay
    assert renamed.steps[1].action == f'type [2] "Brand {fresh} (all items)"'
    assert (renamed.code, renamed.converted, renamed.buyer_id) == (3, True, "b1")
    assert rename_shop(trace, random.Random(7)) == renamed  # seeded
    lettered = rename_shop(Trace("acme", "b", 0, [Step("Brand acme, acmeish", "stop")], False), random.Random(1))
    assert lettered.shop_id.isalpha() and lettered.steps[0].observation == f"Brand {lettered.shop_id}, acmeish"


def test_rename_shops_gives_each_epoch_its_own_shop_names():
    traces = [_tmall_like_trace("10072"), _tmall_like_trace("2231")]
    local = load_tiny(_texts(traces))
    persona_map = PersonaMap.for_codes(4)
    local.tokenizer.add_special_tokens({"extra_special_tokens": persona_map.tokens})
    fixed = epoch_examples(traces, local.tokenizer, persona_map, SFTConfig(neutral_dropout=0.0))
    assert fixed(0) is fixed(2)
    renaming = epoch_examples(traces, local.tokenizer, persona_map, SFTConfig(neutral_dropout=0.0, rename_shops=True))
    first, second = renaming(0), renaming(1)
    assert len(first) == len(second) == len(fixed(0))
    assert [e.input_ids for e in first] == [e.input_ids for e in renaming(0)]  # seeded per epoch
    assert [e.input_ids for e in first] != [e.input_ids for e in second]
    shown = local.tokenizer.decode(first[0].input_ids)
    assert "Brand 10072" not in shown


def test_random_batches_cover_every_example_once_and_mix_page_types():
    # Two page types of different lengths: batches by length would hold one type each, which made
    # the agent swing between page types' answers instead of learning them together.
    lengths = [40] * 100 + [300] * 100
    batches = random_batches(len(lengths), 8, random.Random(1))
    assert sorted(i for batch in batches for i in batch) == list(range(200))
    mixed = [batch for batch in batches if len({lengths[i] for i in batch}) == 2]
    assert len(mixed) > 0.8 * len(batches)


def test_action_loss_keeps_persona_rows_out_of_the_output_softmax():
    traces = make_synthetic_traces(2, seed=4, compact=True)
    local = load_tiny(_texts(traces))
    persona_map = add_persona_tokens(local.model, local.tokenizer, 2, noise_scale=1.0)
    persona_ids = [local.tokenizer.convert_tokens_to_ids(token) for token in persona_map.tokens]
    example = build_examples(traces, local.tokenizer, persona_map, SFTConfig(neutral_dropout=0.0))[0]
    # The persona token taken out of the input: any gradient left on its row comes from the softmax.
    kept = [i for i, token in enumerate(example.input_ids) if token not in persona_ids]
    batch = collate([Example([example.input_ids[i] for i in kept], [example.labels[i] for i in kept])], local.tokenizer.pad_token_id)
    embeddings = local.model.get_input_embeddings().weight
    assert local.model.get_output_embeddings().weight is embeddings  # tied, as SmolLM2's are

    def persona_row_gradient(blocked: list[int]) -> float:
        local.model.zero_grad()
        logits = local.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        action_loss(logits, batch["labels"], torch.tensor(blocked, dtype=torch.long)).backward()
        return float(embeddings.grad[persona_ids].abs().sum())

    assert persona_row_gradient([]) > 0
    assert persona_row_gradient(persona_ids) == 0.0
    # Without blocked ids it is the usual answer-token cross-entropy (what transformers computes).
    with torch.no_grad():
        reference = local.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        logits = local.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.allclose(action_loss(logits, batch["labels"], torch.tensor([], dtype=torch.long)), reference, atol=1e-5)


def test_each_step_counts_once_and_the_decision_steps_weigh_more():
    traces = make_synthetic_traces(2, seed=4, compact=True)
    local = load_tiny(_texts(traces))
    persona_map = add_persona_tokens(local.model, local.tokenizer, 2, noise_scale=1.0)
    trace = traces[0]  # a buyer: category, product page, cart page
    assert trace.converted and cart_decision_step(trace) == len(trace.steps) - 1 != decision_index(trace)
    weights = lambda config: [e.weight for e in build_examples([trace], local.tokenizer, persona_map, config)]
    product_page_only = SFTConfig(neutral_dropout=0.0, decision_weight=4.0, cart_page_decides=False)
    assert weights(product_page_only) == [4.0 if i == decision_index(trace) else 1.0 for i in range(len(trace.steps))]
    both = {decision_index(trace), cart_decision_step(trace)}
    assert weights(SFTConfig(neutral_dropout=0.0)) == [4.0 if i in both else 1.0 for i in range(len(trace.steps))]
    assert cart_decision_step(traces[1]) is None  # a buyer who leaves on the product page
    # The persona tokens' anchors are matched on the same steps (every step where there is none).
    assert anchor_steps(trace, SFTConfig()) == sorted(both)
    assert anchor_steps(trace, product_page_only) == [decision_index(trace)]
    no_decision = replace(trace, steps=trace.steps[: decision_index(trace)])
    assert anchor_steps(no_decision, SFTConfig()) == list(range(len(no_decision.steps)))
    examples = build_examples([trace], local.tokenizer, persona_map, SFTConfig(neutral_dropout=0.0, decision_weight=4.0))
    batch = collate(examples, local.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = local.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        per_example = [action_loss(logits[i : i + 1], batch["labels"][i : i + 1], torch.tensor([], dtype=torch.long))
                       for i in range(len(examples))]
        weighted = sum(e.weight * loss for e, loss in zip(examples, per_example)) / sum(e.weight for e in examples)
        assert torch.allclose(action_loss(logits, batch["labels"], torch.tensor([], dtype=torch.long), batch["weights"]),
                              weighted, atol=1e-5)


# --- the controlled persona check ---------------------------------------------------------------------


def _purchase_gap(local, token, trace):
    """log P(click [Add to cart]) − log P(stop) at the trace's product page, under `token`."""
    index = decision_index(trace)
    step = trace.steps[index]
    add_line = next(line for line in step.observation.splitlines() if '"Add to cart"' in line)
    add_action = "click " + add_line.split("]")[0] + "]"
    prompt = render_prompt(local.tokenizer, token, step.observation, [s.action for s in trace.steps[:index]])
    buy, leave = score_answers(local.model, local.tokenizer, [prompt, prompt], [add_action, "stop"])
    return buy - leave


def _first_token_gap(local, token, trace):
    """Same decision at the level of the verb (first answer token): removes the id's noise."""
    index = decision_index(trace)
    step = trace.steps[index]
    prompt = render_prompt(local.tokenizer, token, step.observation, [s.action for s in trace.steps[:index]])
    ids = local.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        log_probs = torch.log_softmax(local.model(input_ids=ids).logits[0, -1].float(), dim=-1)
    click = local.tokenizer("click", add_special_tokens=False).input_ids[0]
    stop = local.tokenizer("stop", add_special_tokens=False).input_ids[0]
    return float(log_probs[click] - log_probs[stop])


@pytest.fixture(scope="module")
def controlled_agent():
    train = make_synthetic_traces(16, {0: "buy", 1: "leave"}, seed=0, compact=True)
    # Four heads and ~300 steps: the tiny random model needs that long to learn to look back at the
    # persona token from the answer position (fewer steps leave the effect near zero).
    base = load_tiny(_texts(train), TinyModelConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4))
    config = SFTConfig(stage1_epochs=20, stage1_lr=5e-2, stage2_epochs=60, stage2_lr=1e-2, batch_size=8,
                       init_noise_scale=1.0, seed=0)
    return train_agent(train, base, config)


def test_persona_token_drives_purchase_path_and_neutral_removes_the_difference(controlled_agent, tmp_path):
    local, persona_map = controlled_agent.model, controlled_agent.persona_map
    token_a, token_b, neutral = persona_map.token_for(0), persona_map.token_for(1), persona_map.neutral
    held_out = make_synthetic_traces(24, {0: "buy", 1: "leave"}, seed=99, compact=True)

    # Same held-out pages, only the token changes: A's token must favour buying.
    matched = [_purchase_gap(local, token_a, t) - _purchase_gap(local, token_b, t) for t in held_out]
    assert statistics.mean(matched) > 1.0, matched
    assert sum(d > 0 for d in matched) >= 0.9 * len(matched)

    # Group behaviour: A's buyers on their pages with their token vs B's buyers on theirs; then the
    # same groups and pages with the neutral token swapped in.
    group_a = [t for t in held_out if t.code == 0]
    group_b = [t for t in held_out if t.code == 1]
    own = statistics.mean(_first_token_gap(local, token_a, t) for t in group_a) - statistics.mean(
        _first_token_gap(local, token_b, t) for t in group_b)
    with_neutral = statistics.mean(_first_token_gap(local, neutral, t) for t in group_a) - statistics.mean(
        _first_token_gap(local, neutral, t) for t in group_b)
    print(f"persona effect (matched pages, nats): {statistics.mean(matched):.2f}; "
          f"group difference own tokens {own:.2f}, neutral token {with_neutral:.2f}")
    assert own > 1.0
    assert abs(with_neutral) < 0.25 * own

    # The trained agent saves as a plain transformers dir with its curves.
    out = save_agent(controlled_agent, tmp_path / "agent")
    curves = json.loads((out / "training.json").read_text())["curves"]
    assert {c["stage"] for c in curves} == {"stage1", "stage2"}
    assert (out / "training_curves.png").stat().st_size > 1000
    stage2 = [c["loss"] for c in curves if c["stage"] == "stage2"]
    assert statistics.mean(stage2[-5:]) < statistics.mean(stage2[:5]) / 2


def test_lora_stage2_and_single_stage_produce_plain_merged_models():
    train = make_synthetic_traces(4, seed=3, compact=True)
    config = SFTConfig(stage2="lora", single_stage=True, stage2_epochs=1, lora_lr=1e-2, batch_size=4, seed=0)
    reference = load_tiny(_texts(train))  # same texts and seed: the same starting weights
    add_persona_tokens(reference.model, reference.tokenizer, 2, config.init, noise_scale=config.init_noise_scale, seed=config.seed)
    result = train_agent(train, load_tiny(_texts(train)), config)

    trained = dict(result.model.model.named_parameters())
    assert not any("lora" in name or "trainable_tokens" in name for name in trained)
    assert {c["stage"] for c in result.curves} == {"stage2"}
    start = dict(reference.model.named_parameters())
    assert not torch.equal(trained["model.layers.0.self_attn.q_proj.weight"], start["model.layers.0.self_attn.q_proj.weight"])
    embeddings, initial = trained["model.embed_tokens.weight"], start["model.embed_tokens.weight"]
    persona_rows = result.model.tokenizer.convert_tokens_to_ids(result.persona_map.tokens)  # neutral included
    others = [i for i in range(len(initial)) if i not in persona_rows]
    # PEFT's trainable tokens moved the persona rows and nothing else of the vocabulary.
    assert not torch.equal(embeddings[persona_rows], initial[persona_rows])
    assert torch.equal(embeddings[others], initial[others])


# --- SmolLM2 end to end, and the train-agent command ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SIMPERSONA_SLOW") != "1", reason="trains SmolLM2-135M (set SIMPERSONA_SLOW=1)")
def test_smollm2_agent_dir_reloads_with_plain_transformers_and_identical_outputs(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agent.generate import GenerationSettings, generate_batch
    from agent.models import load_base

    train = make_synthetic_traces(4, seed=5, compact=True)
    config = SFTConfig(stage2="lora", num_codes=2, stage1_max_steps=2, stage2_max_steps=2, batch_size=2,
                       max_length=256, device="cpu", seed=0)
    result = train_agent(train, load_base("smollm2"), config)
    out = save_agent(result, tmp_path / "agent", config)

    # What `vllm serve AGENT_DIR` reads: plain weights, the tokenizer with the persona tokens, the
    # chat template, and a generation config that stops at the end of turn.
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert all(len(tokenizer(token, add_special_tokens=False).input_ids) == 1 for token in result.persona_map.tokens)
    assert tokenizer.chat_template and model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")

    trained = result.model
    prompts = [render_prompt(trained.tokenizer, result.persona_map.token_for(t.code), t.steps[0].observation, [])
               for t in train[:2]]
    ids = trained.tokenizer(prompts[0], add_special_tokens=False, return_tensors="pt").input_ids
    assert tokenizer(prompts[0], add_special_tokens=False, return_tensors="pt").input_ids.equal(ids)
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, trained.model(input_ids=ids).logits)
    settings = GenerationSettings(max_new_tokens=8)
    tokenizer.padding_side = "left"
    assert generate_batch(model, tokenizer, prompts, settings).texts == trained.generate(prompts, settings).texts
    stages = json.loads((out / "training.json").read_text())["stages"]
    assert stages["stage1"]["steps"] == stages["stage2"]["steps"] == 2 and stages["stage2"]["device"] == "cpu"


def test_train_agent_command_takes_device_accumulation_and_budgets(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    traces = tmp_path / "traces.jsonl"
    write_traces(make_synthetic_traces(4, seed=6, compact=True), traces)
    result = CliRunner().invoke(app, ["train-agent", "--traces", str(traces), "--out", str(tmp_path / "agent"),
                                      "--base", "tiny", "--device", "cpu", "--batch-size", "2",
                                      "--grad-accumulation", "2", "--max-steps", "3", "--max-seconds", "60"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "agent" / "training.json").read_text())
    assert record["config"]["grad_accumulation"] == 2 and record["config"]["stage2_max_seconds"] == 60
    assert [record["stages"][stage]["steps"] for stage in ("stage1", "stage2")] == [3, 3]
    assert record["stages"]["stage1"]["stopped_by"] == "max_steps"
    # An agent dir as the base: the same agent trained further, its persona tokens kept.
    further = CliRunner().invoke(app, ["train-agent", "--traces", str(traces), "--out", str(tmp_path / "further"),
                                       "--base", str(tmp_path / "agent"), "--device", "cpu", "--max-steps", "2", "--seed", "1"])
    assert further.exit_code == 0 and "training it further" in further.output, further.output
    record = json.loads((tmp_path / "further" / "training.json").read_text())
    assert [record["stages"][stage]["steps"] for stage in ("stage1", "stage2")] == [2, 2]
    assert record["continued_from"] == str(tmp_path / "agent")
    assert (PersonaMap.load(tmp_path / "further").code_to_token == PersonaMap.load(tmp_path / "agent").code_to_token)
    assert len(load_local(tmp_path / "further").tokenizer) == len(load_local(tmp_path / "agent").tokenizer)
    refused = CliRunner().invoke(app, ["train-agent", "--traces", str(traces), "--out", str(tmp_path / "x"),
                                       "--base", "tiny", "--precision", "fp8"])
    assert refused.exit_code != 0 and "--precision must be one of" in " ".join(refused.output.replace("│", " ").split())


# --- where and how long training runs -------------------------------------------------------------------


def test_gradient_accumulation_gives_the_gradient_of_the_whole_batch():
    from agent.sft import Runtime, _accumulate_gradients

    train = make_synthetic_traces(4, seed=8, compact=True)
    local = load_tiny(_texts(train))
    persona_map = add_persona_tokens(local.model, local.tokenizer, 2, noise_scale=1.0)
    examples = build_examples(train, local.tokenizer, persona_map, SFTConfig())[:6]
    # Micro-batches with different numbers of answer tokens: a plain mean of their losses would differ.
    assert len({sum(label != IGNORE_INDEX for label in e.labels) for e in examples}) > 1
    runtime, blocked = Runtime(torch.device("cpu"), None), torch.tensor(persona_token_ids(local.tokenizer, persona_map))
    pad = local.tokenizer.pad_token_id

    def gradients(micro_batches):
        local.model.zero_grad(set_to_none=True)
        loss = _accumulate_gradients(local.model, micro_batches, runtime, pad, blocked)
        return loss, [p.grad.clone() for p in local.model.parameters()]

    whole_loss, whole = gradients([examples])
    split_loss, split = gradients([examples[:2], examples[2:3], examples[3:]])
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(whole, split))


def test_a_stage_stops_at_its_clock_budget_and_says_so():
    train = make_synthetic_traces(4, seed=9, compact=True)
    config = SFTConfig(stage1_max_steps=2, stage2_max_seconds=0.0, batch_size=4, grad_accumulation=2, device="cpu")
    result = train_agent(train, load_tiny(_texts(train)), config)
    assert result.stages["stage1"] | {"stopped_by": "max_steps", "steps": 2} == result.stages["stage1"]
    assert result.stages["stage2"]["steps"] == 0 and result.stages["stage2"]["stopped_by"] == "max_seconds"
    assert [c["stage"] for c in result.curves] == ["stage1", "stage1"]
    assert all(c["seconds"] >= 0 for c in result.curves)


def test_device_and_precision_are_checked():
    from agent.models import resolve_device

    with pytest.raises(ValueError, match="precision must be one of"):
        SFTConfig(precision="fp16")
    with pytest.raises(ValueError, match="grad_accumulation must be >= 1"):
        SFTConfig(grad_accumulation=0)
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_the_same_traces_in_another_order_train_the_same_agent():
    """A replay writes traces in the order its buyers finish; that order must not change the agent."""
    traces = make_synthetic_traces(3, seed=6, compact=True)
    config = SFTConfig(stage1_max_steps=2, stage2_max_steps=2, batch_size=2, neutral_dropout=0.5, seed=1)

    def trained(order):
        local = load_tiny(_texts(traces))
        weights = train_agent(order, local, config).model.model.state_dict()
        return {name: tensor.clone() for name, tensor in weights.items()}

    first, shuffled = trained(traces), trained(list(reversed(traces)))
    assert all(torch.equal(first[name], shuffled[name]) for name in first)


def test_an_agent_goes_on_training_from_its_own_weights_and_persona_rows(tmp_path):
    traces = make_synthetic_traces(8, {0: "buy", 1: "leave"}, seed=2, compact=True)
    config = SFTConfig(stage1_max_steps=6, stage2_max_steps=6, stage2_lr=1e-2, batch_size=4, init_noise_scale=1.0, seed=0)
    first = train_agent(traces, load_tiny(_texts(traces)), config)
    first.persona_map = first.persona_map.with_sampling(0.5, "calibration")
    saved = save_agent(first, tmp_path / "first", config)

    agent = load_local(saved, device="cpu")
    persona_map = PersonaMap.load(saved)
    ids = persona_token_ids(agent.tokenizer, persona_map)
    vocabulary, rows = len(agent.tokenizer), agent.model.get_input_embeddings().weight[ids].detach().clone()
    further = continue_agent(traces, agent, persona_map, replace(config, seed=1))

    # The same tokens, not a second set, and their trained rows moved on from where they were.
    assert len(further.model.tokenizer) == vocabulary
    assert persona_token_ids(further.model.tokenizer, further.persona_map) == ids
    assert not torch.equal(further.model.model.get_input_embeddings().weight[ids], rows)
    # It starts where the first training ended, not from the base's loss.
    losses = lambda result, stage: [c["loss"] for c in result.curves if c["stage"] == stage]
    start, ended = statistics.mean(losses(further, "stage1")[:3]), statistics.mean(losses(first, "stage2")[-3:])
    print(f"first: {losses(first, 'stage1')[:3]} ... {losses(first, 'stage2')[-3:]}; further: {losses(further, 'stage1')[:3]}")
    assert start < statistics.mean(losses(first, "stage1")[:3]) - 1.0 and abs(start - ended) < 0.5
    # The temperature was chosen for the old weights.
    assert further.persona_map.sampling.temperature == 1.0 and further.persona_map.sampling.chosen_by == "default"
    with pytest.raises(ValueError, match="2 persona tokens"):
        continue_agent([replace(traces[0], code=5)], further.model, further.persona_map, config)
