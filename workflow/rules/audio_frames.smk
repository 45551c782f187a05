# Frames of the frozen audio tower and projector, once per speech split, for every run and speech decode
# whose scheme trains neither (config audio_frames.precompute).


rule encode_audio:
    input:
        manifest=paths.speech_manifest_path("{corpus}", "{lang}", "{split}"),
        model=config["model"]["path"],
    output:
        paths.audio_frames_path("{corpus}", "{lang}", "{split}"),
    log:
        "logs/encode_audio/{corpus}/{lang}/{split}.log",
    benchmark:
        paths.benchmark_path("encode_audio/{corpus}/{lang}/{split}")
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("encode_audio", "threads")
    resources:
        **job_resources("encode_audio", gpu=True),
    params:
        settings=audio_frames_settings,
        code=code_version("encode_audio"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m lalm_slu encode-audio --model {input.model:q}"
        " --manifest {input.manifest:q} --settings {params.settings:q} --threads {threads}"
        " --out {output:q} > {log:q} 2>&1"
