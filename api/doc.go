// Package api is the operators' enrollment service: the Azure DPS service REST
// shape (individual enrollments, enrollment groups, registration states) as an
// http.Handler over a store.Store.
//
// Requests are authorised with a service SAS token signed by a named shared
// access policy (sr = the service host name); every change is written straight
// to the store, so the provisioning service sees it on the device's next
// request without a restart, and every change leaves an audit log line that
// names the policy but never a secret.
package api
