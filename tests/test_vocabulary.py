"""The config schema's enums repeat the vocabularies of lalm_slu.config.vocabulary: they must not drift apart."""

from lalm_slu.config.settings import DevEvalSettings, block_properties
from lalm_slu.config.vocabulary import TEST_INPUTS


def test_decode_modalities_enum_is_the_test_inputs():
    assert tuple(block_properties("decode")["modalities"]["items"]["enum"]) == TEST_INPUTS


def test_compared_modality_pairs_enum_is_the_test_inputs():
    pair = block_properties("comparisons")["modality_pairs"]["items"]["items"]
    assert tuple(pair["enum"]) == TEST_INPUTS


def test_dev_evaluation_inputs_are_test_inputs():
    assert set(DevEvalSettings.properties()["inputs"]["items"]["enum"]) <= set(TEST_INPUTS)
