"""Graph model, workflow formats, validation, planning, execution and caching. No diffusers here."""
