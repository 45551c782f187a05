# Frames of the frozen audio tower and projector, once per speech split, for every run and speech decode
# whose scheme trains neither (config audio_frames.precompute).


rule encode_audio:
    input:
        manifest="results/speech/{corpus}/{lang}/{split}.parquet",
        model=config["model"]["path"],
    output:
        "results/audio_frames/{corpus}/{lang}/{split}.safetensors",
    log:
        "logs/encode_audio/{corpus}/{lang}/{split}.log",
    benchmark:
        "results/benchmarks/encode_audio/{corpus}/{lang}/{split}.tsv"
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("encode_audio", "threads")
    resources:
        mem_mb=resource("encode_audio", "mem_mb"),
        runtime=resource("encode_audio", "runtime"),
        gpu=resource("encode_audio", "gpu"),
    params:
        settings=audio_frames_settings,
        code=code_version("encode_audio"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m lalm_slu encode-audio --model {input.model:q}"
        " --manifest {input.manifest:q} --settings {params.settings:q} --threads {threads}"
        " --out {output:q} > {log:q} 2>&1"
