-- What a status does not say alone (docs/CONTRACTS.md, Events): a moved call names the gateways it
-- moved between ("gw-a -> gw-b"), a failed move says why.
ALTER TABLE call_status_history ADD COLUMN detail text;
