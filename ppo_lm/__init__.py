"""The machinery under train_ppo.py, one concern a module; train_ppo.py itself reads as the PPO algorithm.

    validation       what a valid setting is: TRL's parser, types, ranges, accelerate's arguments
    models           loading the policy (with value head, LoRA), the reference and the tokenizer
    data             texts -> prompts, held-out prompts, the order batches are drawn in
    reward_contract  finding the reward function, calling it, checking what it returns
    kl_control       TRL's adaptive KL controller with a floor under beta
    stopping         stop signals and the agreement of all processes on errors and stops
    checkpoints      OUTPUT_DIR/checkpoint-N: save, find, load (exact resume)
    output_dir       the lock, what an earlier run wrote, --overwrite_output_dir that never loses a run
    run_config       run_config.yaml and the settings a resume may not change
    metrics          metrics.jsonl and the trackers
    evaluation       reference vs tuned policy on held-out prompts
    model_card       OUTPUT_DIR/README.md
    hub              hub_model_id: checked at start-up, pushed at the end
    errors           RunError: one line and an exit code
    tiny_models      tiny local models and data for the tests and the benchmark (nothing downloaded)
"""
