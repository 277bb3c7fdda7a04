"""Optional bridges to other libraries. Each imports its library lazily."""
