"""Teachers: every diffusion model wrapped as an EDM denoiser D(x, sigma, cond) -> x0, one family per module.

`teachers.load(path_or_id)` is the only loader (teachers.families): folders, `zoo:` names and hub ids alike.
"""


def load(path_or_id, dtype: str | None = None, key: str = "teacher.path", family: str | None = None):
    """The model of a folder, `zoo:<name>` or hub id as a frozen EDM denoiser of its family (teachers.families.load)."""
    from teachers.families import load as load_family

    return load_family(path_or_id, dtype=dtype, key=key, family=family)
