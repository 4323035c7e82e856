package config

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestExamples loads every examples/*.conf: each must be valid (warnings,
// for PowerMTA directives not implemented yet, are allowed). The test fails
// when there is no example at all, so that a moved directory does not pass
// silently.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../examples/*.conf")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no ../examples/*.conf file")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := Load(f, Options{Hostname: testHostname})
			if err != nil {
				t.Fatalf("%v", err)
			}
			if len(cfg.Listeners) == 0 {
				t.Error("no listener")
			}
			for _, w := range cfg.Warnings {
				t.Logf("warning: %s", w)
			}
		})
	}
}

// TestExampleProviders loads examples/tern.conf with the provider rules it
// includes (examples/rules/providers.conf, which is not a configuration of
// its own and so is not among the files TestExamples loads). The file must
// load without warnings, roll the providers' MX hosts up as its comments
// say, and its rules must take the action their comments promise on the
// replies the providers document.
func TestExampleProviders(t *testing.T) {
	cfg, err := Load("../examples/tern.conf", Options{Hostname: testHostname})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range cfg.Warnings {
		t.Errorf("warning: %s", w)
	}
	if len(cfg.MXRollups) == 0 || !strings.HasSuffix(cfg.MXRollups[0].Pos.File, "rules/providers.conf") {
		t.Fatalf("no <mx-rollup-list> from rules/providers.conf: %+v", cfg.MXRollups)
	}

	for host, want := range map[string]string{
		"gmail-smtp-in.l.google.com":              "gmail.rollup",
		"alt4.gmail-smtp-in.l.google.com":         "gmail.rollup",
		"aspmx.l.google.com":                      "gmail.rollup",
		"smtp.google.com":                         "gmail.rollup",
		"aspmx3.googlemail.com":                   "gmail.rollup",
		"hotmail-com.olc.protection.outlook.com":  "outlook.rollup",
		"eur.olc.protection.outlook.com":          "outlook.rollup",
		"contoso-com.mail.protection.outlook.com": "office365.rollup",
		"mta6.am0.yahoodns.net":                   "yahoo.rollup",
		"mx-aol.mail.gm0.yahoodns.net":            "yahoo.rollup",
		"mx01.mail.icloud.com":                    "icloud.rollup",
		"mx00.emig.gmx.net":                       "gmx-webde.rollup",
		"mx-ha03.web.de":                          "gmx-webde.rollup",
		"mx02.t-online.de":                        "t-online.rollup",
		"mx.example.com":                          "",
		"protection.outlook.com":                  "",
	} {
		if got, _ := cfg.RollupName(host); got != want {
			t.Errorf("RollupName(%s) = %q, want %q", host, got, want)
		}
	}

	// Every rollup has a <domain> block wiring its pattern list.
	lists := map[string]*SMTPPatternList{}
	for _, l := range cfg.SMTPPatternLists {
		lists[l.Name] = l
	}
	listOf := map[string]string{}
	for _, r := range cfg.MXRollups {
		d := findDomain(t, cfg.Domains, r.Name)
		if !d.Settings.SMTPPatternList.Set || lists[d.Settings.SMTPPatternList.Value] == nil {
			t.Errorf("<domain %s> has no smtp-pattern-list", r.Name)
		}
		listOf[r.Name] = d.Settings.SMTPPatternList.Value
	}

	// What the first matching rule does, written as the rule's actions
	// would be: "" when no rule matches.
	action := func(list, reply string) string {
		for _, rule := range lists[list].Rules {
			if !rule.Regexp.MatchString(reply) {
				continue
			}
			a := rule.Actions
			var parts []string
			if a.Mode == ModeBackoff {
				parts = append(parts, "backoff")
			}
			if a.DisableSourceIP {
				parts = append(parts, "disable-source-ip")
			}
			if a.Suspend {
				parts = append(parts, "suspend")
			}
			if a.Threshold.Set {
				parts = append(parts, "threshold="+a.Threshold.Value.String())
			}
			parts = append(parts, "for="+FormatDuration(a.For.Value))
			return strings.Join(parts, ",")
		}
		return ""
	}
	for _, c := range []struct{ rollup, reply, want string }{
		{"gmail.rollup", "421 4.7.28 [203.0.113.42] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. Please visit https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email Senders Guidelines. - gsmtp",
			"disable-source-ip,threshold=3/10m,for=2h"},
		{"gmail.rollup", "421 4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from your DKIM domain. To protect our users from spam, mail sent from your domain has been temporarily rate limited. - gsmtp",
			"backoff,threshold=3/10m,for=2h"},
		{"gmail.rollup", "421 4.7.0 [203.0.113.42] Our system has detected an unusual rate of unsolicited mail originating from your IP address. - gsmtp",
			"backoff,threshold=3/10m,for=2h"},
		{"gmail.rollup", "421 4.7.0 Try again later, closing connection. (EHLO) - gsmtp", "backoff,threshold=5/5m,for=30m"},
		{"gmail.rollup", "421 4.4.5 Server busy, try again later. - gsmtp", "backoff,threshold=10/5m,for=15m"},
		{"gmail.rollup", "450 4.2.1 The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time. - gsmtp", ""},
		{"gmail.rollup", "550 5.1.1 The email account that you tried to reach does not exist. - gsmtp", ""},

		{"outlook.rollup", "451 4.7.650 The mail server [203.0.113.10] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://aka.ms/postmaster (S775)",
			"disable-source-ip,threshold=3/10m,for=1h"},
		{"outlook.rollup", "421 RP-001 (BAY004-MC1F41) Unfortunately, some messages from 203.0.113.10 weren't sent. Please try again. We have limits for how many messages can be sent per hour and per day.",
			"backoff,threshold=3/10m,for=1h"},
		{"outlook.rollup", "451 4.7.500 Server busy. Please try again later from [203.0.113.10]. (S77719)", "backoff,threshold=5/10m,for=30m"},
		{"outlook.rollup", "550 5.7.1 Unfortunately, messages from [203.0.113.10] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3140). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
			"disable-source-ip,for=1d"},
		{"outlook.rollup", "550 5.7.1 Unfortunately, messages from [203.0.113.10] weren't sent. Please contact your Internet service provider since part of their network is on our block list (AS3150).",
			"disable-source-ip,for=1d"},
		{"outlook.rollup", "550 5.5.0 Requested action not taken: mailbox unavailable (S2017)", ""},

		{"office365.rollup", "451 4.7.500 Server busy. Please try again later from [203.0.113.10]. (AS77712344) [AM4PEPF00027A5F.eurprd04.prod.outlook.com]",
			"disable-source-ip,threshold=5/10m,for=1h"},
		{"office365.rollup", "421 4.3.2 The maximum number of concurrent connections per resource forest has exceeded a limit, closing transmission channel.",
			"backoff,threshold=5/5m,for=30m"},
		{"office365.rollup", "550 5.7.606 Access denied, banned sending IP [203.0.113.10]. To request removal from this list please visit https://sender.office.com/ (AS16012609)",
			"disable-source-ip,for=1d"},
		{"office365.rollup", "550 5.4.1 Recipient address rejected: Access denied.", ""},

		{"yahoo.rollup", "421 4.7.0 [TSS04] Messages from 203.0.113.10 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
			"backoff,threshold=3/10m,for=2h"},
		{"yahoo.rollup", "421 4.7.0 [TS01] Messages from 203.0.113.10 temporarily deferred due to user complaints - 4.16.55.1; see https://help.yahoo.com/kb/postmaster/SLN3434.html",
			"backoff,threshold=3/10m,for=4h"},
		{"yahoo.rollup", "421 4.7.1 [TS03] All messages from 203.0.113.10 permanently deferred; Retrying will NOT succeed. See https://help.yahoo.com/kb/postmaster/SLN3436.html",
			"disable-source-ip,for=1d"},
		{"yahoo.rollup", "421 4.7.0 [TSS02] Messages from 203.0.113.10 temporarily deferred", "backoff,threshold=5/10m,for=1h"},
		{"yahoo.rollup", "552 1 Requested mail action aborted, mailbox not found", ""},

		{"icloud.rollup", "421 4.7.1 Messages to someone@icloud.com deferred due to excessive volume. Try again later - https://support.apple.com/en-us/HT204137",
			"backoff,threshold=10/5m,for=30m"},
		{"icloud.rollup", "451 4.7.1 Service unavailable - try again later", "backoff,threshold=10/5m,for=15m"},
		{"icloud.rollup", "550 5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137",
			"backoff,threshold=10/10m,for=1h"},
		{"icloud.rollup", "550 5.1.1 <someone@icloud.com>: user does not exist", ""},

		{"gmx-webde.rollup", "421 web.de (mxweb113) Nemesis ESMTP Service not available Service unavailable Reject due to policy restrictions. Please try again later. Too many messages have been received in a short period of time.",
			"backoff,threshold=3/10m,for=2h"},
		{"gmx-webde.rollup", "554 gmx.net (mxgmx104) Nemesis ESMTP Service not available No SMTP service IP address is block listed. For explanation visit https://postmaster.gmx.net/en/case?c=r0201&i=ip&v=198.51.100.42",
			"disable-source-ip,for=1d"},

		{"t-online.rollup", "554 IP=203.0.113.10 - A problem occurred. (Ask your postmaster for help or to contact tosa@rx.t-online.de to clarify.) (BL)",
			"disable-source-ip,for=1d"},
		{"t-online.rollup", "554 IP=203.0.113.10 - None/bad reputation. Ask your postmaster for help or to contact postmaster@rx.t-online.de for reset. (NOWL)",
			"disable-source-ip,for=1d"},
		{"t-online.rollup", "421 Service not available, closing transmission channel", "backoff,threshold=5/10m,for=1h"},
	} {
		if got := action(listOf[c.rollup], c.reply); got != c.want {
			t.Errorf("%s: %q\n got %q\nwant %q", c.rollup, c.reply, got, c.want)
		}
	}
}
