/*
 * lib/cluster_internal.h - what the cluster limiter shares with the config
 * compiler: the one parser of a Redis address, so that fg_config_check
 * (which never connects) and fg_cluster_limiter_new accept exactly the same
 * forms. Not installed.
 */
#ifndef FG_LIB_CLUSTER_INTERNAL_H
#define FG_LIB_CLUSTER_INTERNAL_H

#include <stddef.h>

/*
 * Splits a Redis address: "host:port" (a host name or an IPv4 address,
 * printable ASCII without '/'), "[IPv6]:port", or "unix:/path". On success
 * returns 0 with *host / *host_len pointing into addr (the socket path for
 * "unix:") and *port 1 .. 65535 (0 for a unix socket); FG_EINVAL for any
 * other form. Built with or without hiredis.
 */
int fg__cluster_addr_split(const char *addr, const char **host, size_t *host_len, int *port);

#endif /* FG_LIB_CLUSTER_INTERNAL_H */
