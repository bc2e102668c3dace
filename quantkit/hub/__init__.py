"""Publishing to the Hugging Face Hub: check the artifact, render its model card, upload it in one commit.

- artifact.py: reload and check a converted directory before anything leaves the machine.
- card.py: the model card (README.md) rendered from the artifact's own JSON through huggingface_hub's card API.
- push.py: `push(directory, repo_id, ...)`, authentication, retries and error mapping.
"""
