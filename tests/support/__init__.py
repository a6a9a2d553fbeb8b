"""What many tests share: worlds, bronze writers, records, times, fakes (one place, no copies)."""
