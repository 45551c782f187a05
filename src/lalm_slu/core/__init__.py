"""What every layer uses: atomic outputs, the job's stage clock, the source hash of a command."""
