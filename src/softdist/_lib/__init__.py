"""Internal helpers: the single import point of array-api-compat/extra and input validation."""
