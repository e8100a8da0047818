"""The two exceptions users see. Both are ``ValueError`` subclasses carrying one clear sentence."""


class RecipeError(ValueError):
    """A recipe is malformed or does not fit the model it is applied to."""


class DeltaError(ValueError):
    """A delta checkpoint is malformed, incomplete, or does not fit the model it is loaded into."""


class UsageError(ValueError):
    """Command-line or script arguments that cannot work (a missing file, an unknown task ...)."""
