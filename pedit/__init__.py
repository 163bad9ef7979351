"""pedit: feature-preserving portrait editing (Chen et al. 2024, "Learning Feature-Preserving
Portrait Editing from Generated Pairs").

Importing `pedit` is cheap; torch and diffusers load when the editing API is first touched:

    from pedit import Editor
    editor = Editor.from_pretrained()          # the bundled toon model, or a model folder
    result = editor.edit(image, "laughing", seed=0)
    result.image, result.mask
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name in ("Editor", "EditResult"):
        from pedit.edit import editor

        return getattr(editor, name)
    raise AttributeError(f"module 'pedit' has no attribute {name!r}")
