"""HTTP transport: one router module per protocol surface, plus the body readers they share."""
