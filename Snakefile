# Root shim: the workflow lives in workflow/; this file only names the default target,
# because an included file's default target is dropped.
include: "workflow/Snakefile"


rule all:
    default_target: True
    input:
        list(main_table().values()),
        # The merged models of the table's rows: CALM's and the baselines' are evaluated,
        # task arithmetic's sweep is not written as checkpoints.
        [f"{baseline_dir('task_arithmetic')}/model"] if "task_arithmetic" in CFG.baselines.methods else [],
