rule decode_test_set:
    input:
        unpack(decode_inputs),
    output:
        "results/runs/{run}/predictions/{testset}.{modality}.jsonl",
    log:
        "logs/decode_test_set/{run}/{testset}.{modality}.log",
    benchmark:
        "results/benchmarks/decode_test_set/{run}/{testset}.{modality}.tsv"
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("decode", "threads")
    resources:
        mem_mb=resource("decode", "mem_mb"),
        runtime=resource("decode", "runtime"),
        gpu=resource("decode", "gpu"),
    params:
        settings=decode_settings,
        audio_frames=audio_frames_argument,
        code=code_version("decode"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m lalm_slu decode --model {input.model:q} --manifest {input.manifest:q}"
        " --modality {wildcards.modality:q} --settings {params.settings:q}"
        " --out {output:q} {params.audio_frames:q} --threads {threads} > {log:q} 2>&1"
