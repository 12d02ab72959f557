"""Bad conversations are refused with a reason and the offending field."""

import pytest

from spiral_common.chat import SEED_RANGE, GenerationParams, Limits, Message, validate_chat
from spiral_common.errors import InvalidArgument

LIMITS = Limits(max_prompt_chars=100, max_tokens_limit=64, default_max_tokens=16, default_temperature=0.7)
HELLO = [Message("user", "hello")]


@pytest.mark.parametrize(
    ("messages", "params", "reason", "field"),
    [
        ([], GenerationParams(), "EMPTY_MESSAGES", "messages"),
        ([Message("robot", "hi")], GenerationParams(), "INVALID_ROLE", "messages[0].role"),
        ([Message("user", "   ")], GenerationParams(), "EMPTY_PROMPT", "messages"),
        ([Message("user", "x" * 101)], GenerationParams(), "PROMPT_TOO_LONG", "messages"),
        (HELLO, GenerationParams(max_tokens=0), "MAX_TOKENS_OUT_OF_RANGE", "params.max_tokens"),
        (HELLO, GenerationParams(max_tokens=-3), "MAX_TOKENS_OUT_OF_RANGE", "params.max_tokens"),
        (HELLO, GenerationParams(max_tokens=65), "MAX_TOKENS_OUT_OF_RANGE", "params.max_tokens"),
        (HELLO, GenerationParams(temperature=2.5), "TEMPERATURE_OUT_OF_RANGE", "params.temperature"),
        (HELLO, GenerationParams(temperature=-0.1), "TEMPERATURE_OUT_OF_RANGE", "params.temperature"),
        (HELLO, GenerationParams(top_p=0.0), "TOP_P_OUT_OF_RANGE", "params.top_p"),
        (HELLO, GenerationParams(stop=("a", "b", "c", "d", "e")), "INVALID_STOP", "params.stop"),
        (HELLO, GenerationParams(stop=("",)), "INVALID_STOP", "params.stop"),
        ([Message("user", "")] * 100_000 + HELLO, GenerationParams(), "TOO_MANY_MESSAGES", "messages"),
        (HELLO, GenerationParams(max_tokens=3_000_000_000), "MAX_TOKENS_OUT_OF_RANGE", "params.max_tokens"),
        (HELLO, GenerationParams(seed=2**70), "SEED_OUT_OF_RANGE", "params.seed"),
        (HELLO, GenerationParams(seed=-(2**63) - 1), "SEED_OUT_OF_RANGE", "params.seed"),
        ([Message("user", "\ud800 hi")], GenerationParams(), "INVALID_TEXT", "messages[0].content"),
        (HELLO, GenerationParams(stop=("\udfff",)), "INVALID_STOP", "params.stop"),
        (HELLO, GenerationParams(temperature=float("nan")), "TEMPERATURE_OUT_OF_RANGE", "params.temperature"),
    ],
)
def test_invalid_input_names_reason_and_field(messages, params, reason, field):
    with pytest.raises(InvalidArgument) as caught:
        validate_chat(messages, params, LIMITS)
    assert caught.value.reason == reason
    assert caught.value.metadata["field"] == field


def test_defaults_fill_unset_parameters():
    chat = validate_chat(HELLO, GenerationParams(), LIMITS)
    assert (chat.max_tokens, chat.temperature, chat.top_p, chat.stop, chat.seed) == (16, 0.7, 1.0, (), None)


def test_explicit_parameters_are_kept():
    chat = validate_chat(HELLO, GenerationParams(max_tokens=64, temperature=0.0, stop=("\n",), seed=7), LIMITS)
    assert (chat.max_tokens, chat.temperature, chat.stop, chat.seed) == (64, 0.0, ("\n",), 7)


def test_the_message_cap_is_inclusive_and_a_setting():
    assert len(validate_chat([Message("user", "")] * 255 + HELLO, GenerationParams(), LIMITS).messages) == 256
    small = Limits(
        max_prompt_chars=100, max_tokens_limit=64, default_max_tokens=16, default_temperature=0.7, max_messages=2
    )
    with pytest.raises(InvalidArgument) as caught:
        validate_chat(HELLO * 3, GenerationParams(), small)
    assert (caught.value.reason, caught.value.metadata["limit"]) == ("TOO_MANY_MESSAGES", "2")


def test_every_64_bit_seed_is_accepted():
    for seed in SEED_RANGE:
        assert validate_chat(HELLO, GenerationParams(seed=seed), LIMITS).seed == seed
