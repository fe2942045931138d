"""The Hugging Face Hub: hub_model_id is checked at start-up, and OUTPUT_DIR is pushed at the end."""

from ppo_lm.errors import RunError, first_line


def check_hub(hub_model_id: str | None) -> None:
    """hub_model_id: the push at the end needs the hub and a token; say so at start-up, not after training."""
    if not hub_model_id:
        return
    from huggingface_hub import constants, whoami

    if constants.HF_HUB_OFFLINE:
        raise RunError(f"hub_model_id '{hub_model_id}': the Hugging Face Hub is offline here (HF_HUB_OFFLINE); unset "
                       "hub_model_id, or push OUTPUT_DIR later from a connected machine with `hf upload`")
    try:
        whoami()
    except Exception as e:
        raise RunError(f"hub_model_id '{hub_model_id}': cannot push to the Hugging Face Hub "
                       f"({first_line(e)}); log in with `hf auth login` or unset hub_model_id"
                       ) from None


def push_to_hub(output_dir, hub_model_id: str) -> str:
    """Upload output_dir (model, card, metrics, eval; not checkpoints or tracker logs) to hub_model_id."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(hub_model_id, exist_ok=True)
    return api.upload_folder(folder_path=str(output_dir), repo_id=hub_model_id,
                             ignore_patterns=["checkpoint-*", "logs/*"]).commit_url
