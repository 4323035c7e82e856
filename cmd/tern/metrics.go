package main

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ternmta/tern/delivery"
	"github.com/ternmta/tern/delivery/acct"
	"github.com/ternmta/tern/queue"
)

// metrics are the daemon's Prometheus series, on their own registry (no
// global default registry), served by the admin API at /metrics.
type metrics struct {
	reg       *prometheus.Registry
	received  *prometheus.CounterVec
	outcomes  *prometheus.CounterVec
	removed   *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	txnTime   *prometheus.HistogramVec
	handlerFn http.Handler
}

func newMetrics(q *queue.Queue) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tern_recipients_received_total", Help: "Recipients accepted (answered 250) by the SMTP listeners, by VMTA.",
		}, []string{"vmta"}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tern_recipient_outcomes_total", Help: "Delivery outcomes by VMTA, outcome (delivered, deferred, bounced) and bounce category.",
		}, []string{"vmta", "outcome", "category"}),
		removed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tern_recipients_removed_total", Help: "Recipients removed from the queue by an operator (POST /api/delete), by VMTA.",
		}, []string{"vmta"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tern_time_in_queue_seconds",
			Help:    "Time from acceptance to the final outcome (delivered or bounced), by VMTA.",
			Buckets: []float64{0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600, 5 * 24 * 3600},
		}, []string{"vmta"}),
		txnTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tern_delivery_duration_seconds",
			Help:    "Time of one outbound SMTP transaction, from MAIL FROM to the final reply, by VMTA and outcome.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180},
		}, []string{"vmta", "outcome"}),
	}
	queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tern_queue_recipients", Help: "Recipients in the queue (ready, deferred and leased)."},
		func() float64 { return float64(q.Totals().Recipients) })
	messages := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tern_queue_messages", Help: "Messages in the queue."},
		func() float64 { return float64(q.Totals().Messages) })
	failed := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tern_spool_failed",
		Help: "1 once a spool write failed: all mail is refused until tern serve is restarted."},
		func() float64 {
			if q.Failed() != nil {
				return 1
			}
			return 0
		})
	m.reg.MustRegister(m.received, m.outcomes, m.removed, m.latency, m.txnTime, queued, messages, failed,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	m.handlerFn = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	return m
}

func (m *metrics) handler() http.Handler { return m.handlerFn }

// connections adds the open connection gauges; the listener and the
// scheduler that count them exist only after the metrics do.
func (m *metrics) connections(inbound, outbound func() int) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tern_smtp_connections_inbound", Help: "Open inbound SMTP connections."},
			func() float64 { return float64(inbound()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tern_smtp_connections_outbound", Help: "Outbound SMTP connections open or being opened."},
			func() float64 { return float64(outbound()) }),
	)
}

// pipes adds the count of accounting records dropped by each pipe
// (<acct-file |PROGRAM>) of the Set, which a reload may change: the
// series are read from its pipes of the moment.
func (m *metrics) pipes(s *acct.Set) {
	m.reg.MustRegister(pipeDrops{s})
}

// pipeDrops collects tern_acct_pipe_dropped_total.
type pipeDrops struct{ s *acct.Set }

var pipeDropsDesc = prometheus.NewDesc("tern_acct_pipe_dropped_total",
	"Accounting records dropped because the program of an <acct-file |PROGRAM> did not read them fast enough, by pipe.",
	[]string{"acct_file"}, nil)

func (p pipeDrops) Describe(ch chan<- *prometheus.Desc) { ch <- pipeDropsDesc }

func (p pipeDrops) Collect(ch chan<- prometheus.Metric) {
	for _, pp := range p.s.Pipes() {
		ch <- prometheus.MustNewConstMetric(pipeDropsDesc, prometheus.CounterValue, float64(pp.Dropped()), pp.Name())
	}
}

func (m *metrics) accepted(msg *queue.Message) {
	for _, rc := range msg.Recipients {
		m.received.WithLabelValues(rc.VMTA).Inc()
	}
}

// removal counts a recipient an operator deleted.
func (m *metrics) removal(r queue.Removal) {
	m.removed.WithLabelValues(r.Recipient.VMTA).Inc()
}

// outcome counts one recipient outcome; category is its bounce category
// ("" for a delivery), already worked out for the accounting record.
func (m *metrics) outcome(ev delivery.Event, category string) {
	m.outcomes.WithLabelValues(ev.Recipient.VMTA, ev.Kind.String(), category).Inc()
	if ev.Duration > 0 {
		m.txnTime.WithLabelValues(ev.Recipient.VMTA, ev.Kind.String()).Observe(ev.Duration.Seconds())
	}
	if ev.Kind.Final() && !ev.Envelope.Received.IsZero() {
		m.latency.WithLabelValues(ev.Recipient.VMTA).Observe(ev.Time.Sub(ev.Envelope.Received).Seconds())
	}
}
