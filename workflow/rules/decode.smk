# One job per run and test set decodes every configured input (speech, text, cascade) with one loaded model.
rule decode_test_set:
    input:
        unpack(decode_inputs),
    # Named by modality: each --input argument pairs a modality's manifest with its own output.
    output:
        **paths.decode_outputs(config["decode"]["modalities"], "{run}", "{testset}"),
    log:
        "logs/decode_test_set/{run}/{testset}.log",
    benchmark:
        paths.benchmark_path("decode_test_set/{run}/{testset}")
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("decode", "threads")
    resources:
        **job_resources("decode", planned_as="decode_test_set"),
    params:
        settings=decode_settings,
        decode_inputs=decode_input_arguments,
        audio_frames=audio_frames_argument,
        code=code_version("decode_test_set"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python -m lalm_slu decode --model {input.model:q}"
        " {params.decode_inputs:q} --settings {params.settings:q}"
        " {params.audio_frames:q} --threads {threads} > {log:q} 2>&1"


# The cascade baseline's first step: the base model transcribes each test set once, for every run.
rule transcribe_test_set:
    input:
        manifest=cascade_speech_manifest,
        model=config["model"]["path"],
    output:
        manifest=paths.cascade_manifest_path("{testset}"),
        wer=report(
            paths.cascade_wer_path("{testset}"),
            caption="../report/cascade.rst",
            category="Cascade",
        ),
    log:
        "logs/transcribe_test_set/{testset}.log",
    benchmark:
        paths.benchmark_path("transcribe_test_set/{testset}")
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("decode", "threads")
    resources:
        **job_resources("decode", planned_as="transcribe_test_set"),
    params:
        settings=cascade_settings,
        code=code_version("transcribe_test_set"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python -m lalm_slu transcribe-test-set --model {input.model:q}"
        " --manifest {input.manifest:q} --settings {params.settings:q} --out {output.manifest:q}"
        " --wer {output.wer:q} --threads {threads} > {log:q} 2>&1"
