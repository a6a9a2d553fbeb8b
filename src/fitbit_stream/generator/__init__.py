"""Deterministic synthetic world: registrations, gym visits, profile CDC, workouts, heart rate."""
