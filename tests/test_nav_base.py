"""The navigation base (harness.eval.nav_base): built from a synthetic world of its own by real
scripted buyers in the real mock store, trained for real (a few steps here), cached by recipe."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from agent.llm_policy import LLMPolicy
from agent.models import load_local
from agent.persona import PersonaAnchors, persona_token_ids
from agent.policy import BuyerTurn
from agent.prompt import PromptConfig, fit_prompt, fit_prompt_ids, prompt_budget, render_prompt
from agent.sft import SFTConfig, build_examples, train_agent
from agent.traces import Step, Trace
from codebook.synthetic import BUYER_TYPES
from harness.eval.nav_base import RECIPE_FILE, NavBaseConfig, ensure_nav_base, make_world, nav_base_dir, replay_world

BUYER_TYPE_NAMES = [kind.name for kind in BUYER_TYPES]
MICRO = NavBaseConfig(shops=2, buyers_per_shop=8, variants=("saved_details", "default"), steps=4, hidden_size=32,
                      layers=1, vocab_size=512, max_length=256)


@pytest.fixture(scope="module")
def micro_base(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIMPERSONA_CACHE", str(cache))
        yield ensure_nav_base(MICRO, progress=False)


def test_the_base_is_built_once_into_the_cache_named_by_its_recipe(micro_base, monkeypatch):
    monkeypatch.setenv("SIMPERSONA_CACHE", str(micro_base.parent.parent))
    assert micro_base == nav_base_dir(MICRO) and micro_base.name == f"nav-base-{MICRO.key()}"
    recipe = json.loads((micro_base / RECIPE_FILE).read_text())
    assert recipe["config"]["world_seed"] == MICRO.world_seed and recipe["traces"] == MICRO.shops * MICRO.buyers_per_shop
    assert recipe["steps_in_traces"] > recipe["traces"]  # scripted buyers took real steps in the store
    built = (micro_base / "model.safetensors").stat().st_mtime_ns
    assert ensure_nav_base(MICRO, progress=False) == micro_base  # cached: not built again
    assert (micro_base / "model.safetensors").stat().st_mtime_ns == built
    assert NavBaseConfig(steps=MICRO.steps + 1).key() != NavBaseConfig(steps=MICRO.steps).key()
    assert not list(micro_base.parent.glob("*.building"))  # no half-built scratch left behind


def test_goal_sessions_join_the_recipe_without_changing_goal_free_keys(tmp_path):
    with_goals = replace(MICRO, goal_buyers_per_shop=2)
    assert with_goals.key() != MICRO.key()
    assert replace(MICRO, goal_type="searcher").key() == MICRO.key()  # no goal sessions: the recipe is the same
    events, catalog, codes, names = make_world(with_goals, tmp_path / "world")
    traces = replay_world(with_goals, events, catalog, codes.head(3), names, tmp_path / "traces", progress=False)
    goal_traces = [trace for trace in traces if trace.goal]
    assert len(traces) - len(goal_traces) == 3
    assert len(goal_traces) == 2 * codes.head(3)["shop_id"].nunique()
    assert all(t.goal.startswith('buy "') and t.converted and t.code == names.index("decisive_buyer") for t in goal_traces)


def test_the_base_drops_its_type_rows_so_a_dataset_adds_its_own_persona_tokens(micro_base, tmp_path):
    base = load_local(micro_base)
    assert not [token for token in base.tokenizer.get_vocab() if token.startswith("<persona")]
    vocabulary = len(base.tokenizer)
    assert base.model.get_input_embeddings().weight.shape[0] == vocabulary
    events, catalog, codes, names = make_world(MICRO, tmp_path / "world")
    traces = replay_world(MICRO, events, catalog, codes.head(4), names, tmp_path / "traces", progress=False)
    dataset_traces = [replace(trace, code=index % 3) for index, trace in enumerate(traces)]  # a dataset's types 0-2 of 4
    anchors = PersonaAnchors.load(micro_base)
    assert set(anchors.names) <= set(BUYER_TYPE_NAMES) and anchors.rows.shape == (len(anchors.names), MICRO.hidden_size)
    result = train_agent(dataset_traces, base, SFTConfig(num_codes=4, single_stage=True, stage2_max_steps=0,
                                                         max_length=256), anchors=anchors)
    assert result.persona_map.prompt_tokens == prompt_budget(256) and result.persona_map.init == "anchored"
    assert len(result.model.tokenizer) == vocabulary + 5  # four codes and the neutral token
    # Each code with traces starts near the type row that explains its traces best; code 3 (no
    # traces) and the neutral token start at the base's neutral row.
    matched = result.stages["anchors"]["matched"]
    assert sorted(matched) == ["0", "1", "2"] and set(matched.values()) <= set(anchors.names)
    rows = result.model.model.get_input_embeddings().weight.detach()
    ids = persona_token_ids(result.model.tokenizer, result.persona_map)
    spread = float(anchors.rows.std(dim=0).norm())
    for code, name in matched.items():
        distances = (anchors.rows - rows[ids[int(code)]]).norm(dim=1)
        assert anchors.names[int(distances.argmin())] == name and float(distances.min()) < 0.5 * spread
    assert torch.equal(rows[ids[3]], anchors.neutral) and torch.equal(rows[ids[-1]], anchors.neutral)


def test_prompts_are_cut_to_the_trained_length_alike_in_training_and_inference(micro_base):
    base = load_local(micro_base)
    tokenizer = base.tokenizer
    page = "URL: http://127.0.0.1/\nTitle: Home\nElements:\n" + "\n".join(
        f'[{i}] link "Product number {i} with a long name"' for i in range(1, 120))
    prompt = fit_prompt(tokenizer, "", page, [], PromptConfig(), 300)
    assert len(tokenizer(prompt, add_special_tokens=False).input_ids) <= 300
    assert "[1] link" in prompt and "[119] link" not in prompt  # the page is cut from the bottom, at a line
    assert fit_prompt(tokenizer, "", page, [], PromptConfig(), None) == render_prompt(tokenizer, "", page, [])
    for budget in (300, None):  # training takes the ids of the very prompt inference would show
        assert fit_prompt_ids(tokenizer, "", page, [], PromptConfig(), budget) == tokenizer(
            fit_prompt(tokenizer, "", page, [], PromptConfig(), budget), add_special_tokens=False).input_ids

    result = train_agent([Trace("shop", "buyer", 0, [Step(page, "click [3]")], False)], base,
                         SFTConfig(num_codes=1, stage1_max_steps=1, stage2_max_steps=1, max_length=312))
    example = build_examples([Trace("shop", "buyer", 0, [Step(page, "click [3]")], False)], result.model.tokenizer,
                             result.persona_map, SFTConfig(max_length=312, neutral_dropout=0.0))[0]
    trained_prompt = [i for i, label in zip(example.input_ids, example.labels) if label == -100]
    policy = LLMPolicy(result.model, result.persona_map)
    inference_prompt = tokenizer_ids(result.model.tokenizer, policy.prompts([BuyerTurn(0, 0, page)])[0])
    assert inference_prompt == trained_prompt and len(inference_prompt) <= prompt_budget(312)


def tokenizer_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids
