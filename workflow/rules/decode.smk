# One job per run and test set decodes every configured input (speech, text, cascade) with one loaded model.
rule decode_test_set:
    input:
        unpack(decode_inputs),
    output:
        expand(
            "results/runs/{{run}}/predictions/{{testset}}.{modality}.jsonl",
            modality=config["decode"]["modalities"],
        ),
    log:
        "logs/decode_test_set/{run}/{testset}.log",
    benchmark:
        "results/benchmarks/decode_test_set/{run}/{testset}.tsv"
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("decode", "threads")
    resources:
        mem_mb=resource("decode", "mem_mb"),
        runtime=planned_resource("decode_test_set", "decode", "runtime"),
        gpu=planned_resource("decode_test_set", "decode", "gpu"),
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
        manifest="results/cascade/{testset}.parquet",
        wer=report(
            "results/cascade/{testset}.wer.json",
            caption="../report/cascade.rst",
            category="Cascade",
        ),
    log:
        "logs/transcribe_test_set/{testset}.log",
    benchmark:
        "results/benchmarks/transcribe_test_set/{testset}.tsv"
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("decode", "threads")
    resources:
        mem_mb=resource("decode", "mem_mb"),
        runtime=planned_resource("transcribe_test_set", "decode", "runtime"),
        gpu=planned_resource("transcribe_test_set", "decode", "gpu"),
    params:
        settings=cascade_settings,
        code=code_version("transcribe_test_set"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python -m lalm_slu transcribe-test-set --model {input.model:q}"
        " --manifest {input.manifest:q} --settings {params.settings:q} --out {output.manifest:q}"
        " --wer {output.wer:q} --threads {threads} > {log:q} 2>&1"
