"""Who is calling, and what they may use.

Every RPC of the Hearth services is authenticated before its handler runs
(server/registry.py calls Authenticator.authenticate) and yields a
Principal: an identity plus the models it may use and whether it may load
and unload models.

  principal.py      Principal and the per-identity ACL
  tokens.py         bearer tokens: `hearth tokens create|list|revoke`; only keyed
                    hashes are stored, in the sealed store's catalog
  peercred.py       the unix socket front: SO_PEERCRED gives each connection's uid
  tls.py            mTLS server credentials; the client certificate's subject
  authenticator.py  puts the pieces together, per request
"""
