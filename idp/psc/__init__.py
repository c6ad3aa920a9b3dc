"""Pro Santé Connect: logging in with a CPS / e-CPS card, and linking that identity to a
portal account (J8). client.py speaks OpenID Connect with PSC; views.py holds the flows."""
