-- The renewal report: certificates not revoked, by the end of their validity
-- (`Store::expiring_device_certificates`). Partial, so revoked certificates cost it nothing.

CREATE INDEX device_certificates_expiry ON device_certificates (not_after, serial)
    WHERE revoked_at IS NULL;
