"""Terminal views: a rich live view for humans and a plain line log for CI."""
