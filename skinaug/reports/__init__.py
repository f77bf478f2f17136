"""What a dataset looks like: `inspection` (the dataset report of `skinaug inspect`) and `preview` (contact sheets)."""
