"""One function per pipeline stage, files in and files out, named as its Snakemake rule and its
`python -m calm` command. The CLI and the rules call these and nothing else; each writes its
outputs atomically. One module per rule file of workflow/rules/, under the same name:

- `fetch`: fetch_model, fetch_finetuned, fetch_data
- `prepare`: prepare
- `finetune`: finetune
- `score`: score, select
- `merge`: calm_base, calm_step, calm_model
- `baselines`: merge_baseline, and the adapters (ADAPTERS) that feed the data-driven methods their data
- `evaluate`: evaluate, evaluate_task_arithmetic, table, seeds
- `ablations`: mask_parts, ablation_topk, ablation_table, grid, and the sweeps' table over seeds
- `family`: what they share: opening the model family, task vectors, test predictions

The `paper` rules' items are built by calm.paper.registry.
"""
