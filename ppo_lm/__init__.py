"""The machinery under train_ppo.py, one concern a module; train_ppo.py itself reads as the PPO algorithm. Importing
any of them changes nothing outside it (tests/test_compat.py checks).

    launch           what the script sets before torch, TRL and DeepSpeed are imported (called by train_ppo.py)
    compat           the shims that keep trl 0.11.4 working on transformers 5, each with its reason
    validation       what a valid setting is: TRL's parser, types, ranges, accelerate's arguments
    models           loading the policy (with value head, LoRA), the reference and the tokenizer
    data             loading datasets and held-out prompts, the order batches are drawn in
    prompts          text prefixes or whole prompts (chat templates), where answers end, columns for the rewards
    reward_contract  finding the reward function, calling it, checking what it returns
    kl_control       TRL's adaptive KL controller with a floor under beta
    processes        the processes of a run failing and stopping together; a lost process, out of memory, the end
    signals          SIGINT/SIGTERM: finish the step, checkpoint, say how to resume
    checkpoints      OUTPUT_DIR/checkpoint-N: save, find, load (exact resume)
    output_dir       the lock, what an earlier run wrote, the directories a run must not write to
    run_config       run_config.yaml and the settings a resume may not change
    metrics          metrics.jsonl, the trackers and the step's row
    evaluation       reference vs tuned policy on held-out prompts
    plots            training curves and the reward-KL frontier (plot.py is their command line)
    model_card       OUTPUT_DIR/README.md
    hub              hub_model_id: checked at start-up, pushed at the end
    errors           RunError (one line and an exit code), failed writes, an exception's first line
    zero             DeepSpeed ZeRO-2/3
    tiny_models      tiny local models and data for the tests and the benchmark (nothing downloaded)
"""
