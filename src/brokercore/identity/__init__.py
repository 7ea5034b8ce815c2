"""The broker's customers: who they are and how they prove it (the accounts service's
library). Sign-up and KYC (users), argon2id passwords (passwords), TOTP second factors
and recovery codes (totp), the keys that sign access tokens and their JWKS (keys), refresh
tokens and their families (sessions), failed-login limits (throttle), and the audit log
of operator actions (audit). No web framework here: brokercore.services.accounts maps it
onto HTTP."""
