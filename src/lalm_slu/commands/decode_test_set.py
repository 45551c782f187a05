"""Decode a test set's inputs with a fine-tuned model (see lalm_slu/evaluation/decode.py)."""

from __future__ import annotations

import json

from lalm_slu.config.vocabulary import TEST_INPUTS


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="fine-tuned model directory (full weights or a LoRA adapter)")
    parser.add_argument("--input", required=True, action="append", nargs=3, metavar=("MODALITY", "MANIFEST", "OUT"),
                        help="decode MANIFEST's MODALITY (speech, text, or cascade: text input from a cascade "
                        "manifest, see transcribe-test-set) into the predictions jsonl OUT; repeat for each input, "
                        "all with the one loaded model")
    parser.add_argument("--settings", required=True, help="JSON: num_beams, batch_size, max_new_tokens, instruction")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (a resource: it does not identify the run)")
    parser.add_argument("--audio-frames", help="the speech manifest's precomputed frames (encode-audio), for a "
                        "model whose audio tower and projector stayed frozen")


def run(args):
    from lalm_slu.evaluation.decode import decode
    from lalm_slu.model.loading import set_threads

    for modality, manifest, _ in args.input:
        if modality not in TEST_INPUTS:
            raise SystemExit(f"--input: modality must be one of {', '.join(TEST_INPUTS)}, not {modality!r}")
        check_input(modality, manifest)
    set_threads(args.threads)
    print(json.dumps(decode(args.model, [tuple(i) for i in args.input], json.loads(args.settings),
                            args.audio_frames)))


# The columns transcribe-test-set adds: a manifest with them holds the base model's transcripts, not the gold text.
CASCADE_COLUMNS = ("reference_text", "asr_answer")


def check_input(modality: str, manifest: str) -> None:
    """A DataError naming the manifest unless it holds utterances of the kind `modality` decodes: cascade input
    is a cascade manifest, text input the gold text."""
    import pyarrow.parquet

    from lalm_slu.data.records import DataError

    try:
        metadata = pyarrow.parquet.read_metadata(manifest)
    except FileNotFoundError:
        raise DataError("manifest not found", manifest) from None
    except pyarrow.ArrowInvalid as error:
        raise DataError(f"not a parquet manifest ({error})", manifest) from None
    if metadata.num_rows == 0:
        raise DataError(f"no utterances to decode ({modality} input)", manifest)
    cascade = set(CASCADE_COLUMNS) <= set(metadata.schema.names)
    if modality == "cascade" and not cascade:
        raise DataError("cascade input must be a cascade manifest (transcribe-test-set's, with columns "
                        f"{', '.join(CASCADE_COLUMNS)}), not a test manifest", manifest)
    if modality == "text" and cascade:
        raise DataError("text input must be the gold test manifest, not a cascade manifest of transcripts", manifest)
