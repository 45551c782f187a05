import json

import pytest

from lalm_slu.data.slu_json import Prediction, format_target, parse_prediction

ALARM = {"scenario": "alarm", "action": "set", "entities": [{"type": "time", "filler": "six am"}]}


def test_format_target_is_one_line_of_json_with_fixed_key_order():
    text = format_target("alarm", "set", [{"filler": "six am", "type": "time"}])
    assert text == '{"scenario": "alarm", "action": "set", "entities": [{"type": "time", "filler": "six am"}]}'
    assert "\n" not in text


def test_format_target_keeps_non_ascii_characters():
    text = format_target("wetter", "abfrage", [{"type": "ort", "filler": "Köln"}])
    assert "Köln" in text
    assert json.loads(text)["entities"] == [{"type": "ort", "filler": "Köln"}]


def test_format_target_drops_extra_entity_keys():
    text = format_target("alarm", "set", [{"type": "time", "filler": "six am", "span": [3, 4]}])
    assert json.loads(text)["entities"] == [{"type": "time", "filler": "six am"}]


def test_parse_round_trips_format_target():
    prediction = parse_prediction(format_target("alarm", "set", ALARM["entities"]))
    assert prediction == Prediction("alarm", "set", ALARM["entities"], parsed=True, error=None)
    assert prediction.intent == "alarm_set"


def test_parse_ignores_text_around_the_json():
    prediction = parse_prediction("Sure, here you go: ```json\n" + json.dumps(ALARM) + "\n``` done.")
    assert (prediction.scenario, prediction.action, prediction.entities) == ("alarm", "set", ALARM["entities"])
    assert prediction.parsed
    assert "ignored text" in prediction.error


def test_parse_accepts_single_quotes():
    prediction = parse_prediction(
        "{'scenario': 'alarm', 'action': 'set', 'entities': [{'type': 'time', 'filler': \"six o'clock\"}]}"
    )
    assert prediction.parsed
    assert prediction.entities == [{"type": "time", "filler": "six o'clock"}]


def test_parse_accepts_trailing_commas():
    prediction = parse_prediction(
        '{"scenario": "alarm", "action": "set", "entities": [{"type": "time", "filler": "six am",},],}'
    )
    assert prediction.parsed
    assert prediction.entities == [{"type": "time", "filler": "six am"}]


def test_parse_keeps_commas_and_brackets_inside_strings():
    prediction = parse_prediction(
        '{"scenario": "lists", "action": "add", "entities": [{"type": "item", "filler": "a, ]b}"},]}'
    )
    assert prediction.entities == [{"type": "item", "filler": "a, ]b}"}]


def test_parse_reads_entity_given_as_type_to_filler_pair():
    prediction = parse_prediction(
        '{"scenario": "alarm", "action": "set", "entities": [{"time": "six am"}, {"date": "monday"}]}'
    )
    assert prediction.entities == [{"type": "time", "filler": "six am"}, {"type": "date", "filler": "monday"}]


def test_parse_reads_entities_given_as_a_mapping():
    prediction = parse_prediction('{"scenario": "alarm", "action": "set", "entities": {"time": "six am"}}')
    assert prediction.entities == [{"type": "time", "filler": "six am"}]
    assert prediction.parsed


def test_parse_missing_entities_field_means_no_entities():
    prediction = parse_prediction('{"scenario": "weather", "action": "query"}')
    assert prediction.parsed
    assert prediction.entities == []


def test_parse_takes_scenario_and_action_from_an_unambiguous_intent():
    prediction = parse_prediction('{"intent": "alarm_set", "entities": []}')
    assert (prediction.scenario, prediction.action, prediction.parsed) == ("alarm", "set", True)


def test_parse_intent_completes_a_missing_action():
    prediction = parse_prediction('{"scenario": "iot", "intent": "iot_hue_lightoff", "entities": []}')
    assert (prediction.scenario, prediction.action) == ("iot", "hue_lightoff")


def test_parse_rejects_an_intent_with_several_split_points():
    prediction = parse_prediction('{"intent": "iot_hue_lightoff", "entities": []}')
    assert not prediction.parsed
    assert prediction.scenario is None and prediction.action is None


def test_parse_splits_intent_at_a_known_scenario():
    prediction = parse_prediction('{"intent": "iot_hue_lightoff"}', known_scenarios={"iot", "alarm"})
    assert (prediction.scenario, prediction.action) == ("iot", "hue_lightoff")


def test_parse_closes_json_truncated_after_a_complete_value():
    prediction = parse_prediction(
        '{"scenario": "alarm", "action": "set", "entities": [{"type": "time", "filler": "six am"},'
    )
    assert prediction.parsed
    assert prediction.entities == [{"type": "time", "filler": "six am"}]
    assert "truncated" in prediction.error


def test_parse_fails_on_json_truncated_inside_a_string():
    prediction = parse_prediction('{"scenario": "alarm", "action": "se')
    assert prediction == Prediction(parsed=False, error="no JSON object found")


def test_parse_drops_unreadable_entities_but_keeps_the_rest():
    prediction = parse_prediction(
        '{"scenario": "alarm", "action": "set", "entities": [{"type": "time"}, {"type": "date", "filler": "monday"}, 7]}'
    )
    assert prediction.parsed
    assert prediction.entities == [{"type": "date", "filler": "monday"}]
    assert "dropped 2 unreadable entities" in prediction.error


def test_parse_skips_objects_without_slu_keys():
    prediction = parse_prediction('{"note": 1} then {"scenario": "alarm", "action": "set", "entities": []}')
    assert (prediction.scenario, prediction.action) == ("alarm", "set")


def test_parse_accepts_capitalized_keys_and_strips_labels():
    prediction = parse_prediction(
        '{"Scenario": " alarm ", "ACTION": "set", "Entities": [{"Type": "time", "Filler": " six am "}]}'
    )
    assert (prediction.scenario, prediction.action) == ("alarm", "set")
    assert prediction.entities == [{"type": "time", "filler": "six am"}]


def test_parse_turns_numeric_filler_into_text():
    prediction = parse_prediction('{"scenario": "alarm", "action": "set", "entities": [{"type": "time", "filler": 6}]}')
    assert prediction.entities == [{"type": "time", "filler": "6"}]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alarm set",
        "{",
        "}{",
        '{"scenario": "alarm"}',
        '{"scenario": null, "action": "set"}',
        '{"scenario": ["alarm"], "action": "set"}',
        "[1, 2, 3]",
        "{" * 5000,
        None,
        42,
    ],
)
def test_parse_never_raises_and_unreadable_output_is_an_empty_prediction(text):
    prediction = parse_prediction(text)
    assert not prediction.parsed
    assert (prediction.scenario, prediction.action, prediction.entities) == (None, None, [])
    assert prediction.intent is None
    assert prediction.error
